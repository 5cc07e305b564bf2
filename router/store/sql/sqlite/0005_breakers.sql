-- The last change of each destination's circuit breaker, shared by every dispatcher on the
-- store: an outage one of them saw holds the others back too, and a probe that went through
-- closes it for all.
CREATE TABLE breakers (
    key         TEXT PRIMARY KEY,
    state       TEXT NOT NULL CHECK (state IN ('open', 'closed')),
    changed_at  TEXT NOT NULL
) WITHOUT ROWID;

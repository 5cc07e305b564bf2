-- The last change of each destination's circuit breaker, shared by every dispatcher on the
-- store: an outage one of them saw holds the others back too, and a probe that went through
-- closes it for all.
CREATE TABLE breakers (
    key         text PRIMARY KEY,
    state       text NOT NULL CHECK (state IN ('open', 'closed')),
    changed_at  timestamptz NOT NULL
);

-- One row rewritten by /readyz while ingest commits are failing: a real commit tells when the
-- store can take events again.
CREATE TABLE store_probe (
    id  integer PRIMARY KEY CHECK (id = 1),
    at  timestamptz NOT NULL
);

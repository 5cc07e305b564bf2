-- One row rewritten by /readyz while ingest commits are failing (a full disk): a real commit
-- tells when the store can take events again.
CREATE TABLE store_probe (
    id  INTEGER PRIMARY KEY CHECK (id = 1),
    at  TEXT NOT NULL
);

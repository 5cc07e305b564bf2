-- Events as ingested: one row per dedupe key, the full normalised event as JSON in `body`.
CREATE TABLE events (
    id              TEXT PRIMARY KEY,
    source          TEXT NOT NULL,
    type            TEXT NOT NULL,
    provider_type   TEXT NOT NULL,
    dedupe_key      TEXT NOT NULL UNIQUE,
    channel         TEXT,
    contact_address TEXT,
    conversation_key TEXT,
    status          TEXT NOT NULL,
    received_at     TEXT NOT NULL,
    occurred_at     TEXT,
    correlation_id  TEXT NOT NULL,
    body            BLOB NOT NULL,
    content_type    TEXT NOT NULL,
    raw_body        BLOB,
    raw_blob        TEXT
);
CREATE INDEX events_by_received ON events (received_at);
CREATE INDEX events_by_source_type ON events (source, type, received_at);
CREATE INDEX events_by_conversation ON events (conversation_key, id);

-- One-time provider tokens (Mailgun): a token may come back only with the same dedupe key.
CREATE TABLE nonces (
    source      TEXT NOT NULL,
    nonce       TEXT NOT NULL,
    dedupe_key  TEXT NOT NULL,
    seen_at     TEXT NOT NULL,
    PRIMARY KEY (source, nonce)
) WITHOUT ROWID;

-- Verified requests whose payload could not be understood (answered 400), kept for inspection.
CREATE TABLE quarantine (
    id              TEXT PRIMARY KEY,
    source          TEXT NOT NULL,
    received_at     TEXT NOT NULL,
    reason          TEXT NOT NULL,
    content_type    TEXT NOT NULL,
    raw_body        BLOB,
    raw_blob        TEXT,
    correlation_id  TEXT NOT NULL
);

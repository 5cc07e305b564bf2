-- Events as ingested: one row per dedupe key, the full normalised event as JSON in `body`.
-- Ids sort bytewise (COLLATE "C"), as on SQLite: arrival order and cursors do not depend on
-- the database's locale.
CREATE TABLE events (
    id               text COLLATE "C" PRIMARY KEY,
    source           text NOT NULL,
    type             text NOT NULL,
    provider_type    text NOT NULL,
    dedupe_key       text NOT NULL UNIQUE,
    channel          text,
    contact_address  text,
    conversation_key text,
    status           text NOT NULL,
    received_at      timestamptz NOT NULL,
    occurred_at      timestamptz,
    correlation_id   text NOT NULL,
    body             bytea NOT NULL,
    content_type     text NOT NULL,
    raw_body         bytea,
    raw_blob         text
);
CREATE INDEX events_by_received ON events (received_at);
CREATE INDEX events_by_source_type ON events (source, type, received_at);
CREATE INDEX events_by_conversation ON events (conversation_key, id);

-- One-time provider tokens (Mailgun): a token may come back only with the same dedupe key.
CREATE TABLE nonces (
    source      text NOT NULL,
    nonce       text NOT NULL,
    dedupe_key  text NOT NULL,
    seen_at     timestamptz NOT NULL,
    PRIMARY KEY (source, nonce)
);
CREATE INDEX nonces_by_seen ON nonces (seen_at);

-- Verified requests whose payload could not be understood (answered 400), kept for inspection.
CREATE TABLE quarantine (
    id              text COLLATE "C" PRIMARY KEY,
    source          text NOT NULL,
    received_at     timestamptz NOT NULL,
    reason          text NOT NULL,
    content_type    text NOT NULL,
    raw_body        bytea,
    raw_blob        text,
    correlation_id  text NOT NULL
);

-- Large bodies and attachments, content-addressed (sha256 hex). SQLite keeps them as files
-- beside the database; several boxes share one PostgreSQL, so here they live in it.
CREATE TABLE blobs (
    digest   text PRIMARY KEY,
    content  bytea NOT NULL
);

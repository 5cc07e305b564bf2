-- Routing (SPEC §7-9): the worker's leases, what it decides and the side effects it makes.

-- Tries of an event whose processing raised; after `worker.max_attempts` it is `failed`.
ALTER TABLE events ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
-- Unfinished events in arrival order: what the worker's claim scans (small: done rows leave it).
CREATE INDEX events_unfinished ON events (id) WHERE status IN ('received', 'processing');

-- A worker's hold on a lane (a conversation, or `event:ID` for an event without one). The token
-- fences commits: a worker whose lease was taken over cannot commit under its old token.
-- `until` doubles as the retry time of a lane whose head event raised.
CREATE TABLE leases (
    lane    TEXT PRIMARY KEY,
    token   TEXT,
    owner   TEXT,
    until   TEXT NOT NULL
) WITHOUT ROWID;

-- Slack escalation threads, `slack:CHANNEL:TS`, mapped to the conversation they escalated:
-- agent replies and button presses in the thread are ordered with that conversation.
CREATE TABLE threads (
    thread_key       TEXT PRIMARY KEY,
    conversation_key TEXT NOT NULL
) WITHOUT ROWID;

-- A conversation's state; `body` is the machine's whole value as JSON.
CREATE TABLE conversations (
    key         TEXT PRIMARY KEY,
    state       TEXT NOT NULL,
    channel     TEXT,
    contact     TEXT,
    body        BLOB NOT NULL,
    updated_at  TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX conversations_by_state ON conversations (state, updated_at);

-- Consent per contact key (an SMS number and the same number on WhatsApp are one contact).
CREATE TABLE contacts (
    key          TEXT PRIMARY KEY,
    consent      TEXT NOT NULL,
    opted_out_at TEXT,
    timezone     TEXT,
    updated_at   TEXT NOT NULL
) WITHOUT ROWID;

-- Every consent change, never rewritten.
CREATE TABLE consent_ledger (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    contact_key  TEXT NOT NULL,
    at           TEXT NOT NULL,
    event_id     TEXT NOT NULL,
    channel      TEXT,
    change       TEXT NOT NULL,
    reason       TEXT NOT NULL
);
CREATE INDEX consent_ledger_by_contact ON consent_ledger (contact_key, seq);

-- One row per routing of an event (a replay adds one).
CREATE TABLE runs (
    seq       INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id  TEXT NOT NULL,
    at        TEXT NOT NULL,
    body      BLOB NOT NULL
);
CREATE INDEX runs_by_event ON runs (event_id, seq);

-- Side effects, made in the transaction of the event that caused them; the id is
-- deterministic, so routing an event again never makes a second row.
CREATE TABLE outbox (
    seq                 INTEGER PRIMARY KEY AUTOINCREMENT,
    id                  TEXT NOT NULL UNIQUE,
    event_id            TEXT NOT NULL,
    conversation_key    TEXT,
    contact_key         TEXT,
    channel             TEXT NOT NULL,
    recipient           TEXT NOT NULL,
    category            TEXT NOT NULL,
    kind                TEXT NOT NULL,
    status              TEXT NOT NULL,
    not_before          TEXT,
    created_at          TEXT NOT NULL,
    attempts            INTEGER NOT NULL DEFAULT 0,
    last_error          TEXT,
    provider_message_id TEXT,
    payload             BLOB NOT NULL
);
CREATE INDEX outbox_by_event ON outbox (event_id);
CREATE INDEX outbox_by_status ON outbox (status, seq);
CREATE INDEX outbox_waiting_by_contact ON outbox (contact_key) WHERE status IN ('pending', 'deferred');
CREATE INDEX outbox_by_conversation ON outbox (conversation_key, seq);

-- Armed conversation timers; at `due_at` one becomes a `timer.NAME` event (deduplicated, so
-- a timer fires once however many processes or restarts see it due).
CREATE TABLE timers (
    conversation_key TEXT NOT NULL,
    timer            TEXT NOT NULL,
    due_at           TEXT NOT NULL,
    PRIMARY KEY (conversation_key, timer)
) WITHOUT ROWID;
CREATE INDEX timers_by_due ON timers (due_at);

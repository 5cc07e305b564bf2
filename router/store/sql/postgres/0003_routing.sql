-- Routing (SPEC §7-9): the workers' leases, what they decide and the side effects they make.

-- Tries of an event whose processing raised; after `worker.max_attempts` it is `failed`.
ALTER TABLE events ADD COLUMN attempts integer NOT NULL DEFAULT 0;
-- Unfinished events in arrival order: what the workers' claims scan.
CREATE INDEX events_unfinished ON events (id) WHERE status IN ('received', 'processing');

-- A worker's hold on a lane (a conversation, or `event:ID` for an event without one). The token
-- is random and new for every claim: it fences commits, so a worker whose lease was taken over
-- cannot commit under its old token. `until` doubles as the retry time of a lane whose head
-- event raised (token NULL).
CREATE TABLE leases (
    lane    text PRIMARY KEY,
    token   text,
    owner   text,
    until   timestamptz NOT NULL
);

-- Slack escalation threads, `slack:CHANNEL:TS`, mapped to the conversation they escalated.
CREATE TABLE threads (
    thread_key       text PRIMARY KEY,
    conversation_key text NOT NULL
);

-- A conversation's state; `body` is the machine's whole value as JSON.
CREATE TABLE conversations (
    key         text PRIMARY KEY,
    state       text NOT NULL,
    channel     text,
    contact     text,
    body        bytea NOT NULL,
    updated_at  timestamptz NOT NULL
);
CREATE INDEX conversations_by_state ON conversations (state, updated_at);

-- Consent per contact key (an SMS number and the same number on WhatsApp are one contact).
CREATE TABLE contacts (
    key          text PRIMARY KEY,
    consent      text NOT NULL,
    opted_out_at timestamptz,
    timezone     text,
    updated_at   timestamptz NOT NULL
);

-- Every consent change, never rewritten.
CREATE TABLE consent_ledger (
    seq          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    contact_key  text NOT NULL,
    at           timestamptz NOT NULL,
    event_id     text NOT NULL,
    channel      text,
    change       text NOT NULL,
    reason       text NOT NULL
);
CREATE INDEX consent_ledger_by_contact ON consent_ledger (contact_key, seq);

-- One row per routing of an event (a replay adds one).
CREATE TABLE runs (
    seq       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id  text NOT NULL,
    at        timestamptz NOT NULL,
    body      bytea NOT NULL
);
CREATE INDEX runs_by_event ON runs (event_id, seq);

-- Side effects, made in the transaction of the event that caused them; the id is
-- deterministic, so routing an event again never makes a second row.
CREATE TABLE outbox (
    seq                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id                  text NOT NULL UNIQUE,
    event_id            text NOT NULL,
    conversation_key    text,
    contact_key         text,
    channel             text NOT NULL,
    recipient           text NOT NULL,
    category            text NOT NULL,
    kind                text NOT NULL,
    status              text NOT NULL,
    not_before          timestamptz,
    created_at          timestamptz NOT NULL,
    attempts            integer NOT NULL DEFAULT 0,
    last_error          text,
    provider_message_id text,
    payload             bytea NOT NULL
);
CREATE INDEX outbox_by_event ON outbox (event_id);
CREATE INDEX outbox_by_status ON outbox (status, seq);
CREATE INDEX outbox_waiting_by_contact ON outbox (contact_key) WHERE status IN ('pending', 'deferred');
CREATE INDEX outbox_by_conversation ON outbox (conversation_key, seq);

-- Armed conversation timers; at `due_at` one becomes a `timer.NAME` event (deduplicated, so
-- a timer fires once however many processes see it due).
CREATE TABLE timers (
    conversation_key text NOT NULL,
    timer            text NOT NULL,
    due_at           timestamptz NOT NULL,
    PRIMARY KEY (conversation_key, timer)
);
CREATE INDEX timers_by_due ON timers (due_at);

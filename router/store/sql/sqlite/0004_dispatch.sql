-- Dispatch (SPEC §8): leases on outbox rows, retries, attempts, delivery receipts, rate slots.

-- Rows of one lane leave in creation order: the conversation and the channel (a customer's
-- texts in order, the Slack thread's posts in order), or the row alone.
ALTER TABLE outbox ADD COLUMN lane TEXT;
-- 0 conversational and transactional, 1 marketing: claimed in that order.
ALTER TABLE outbox ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
-- When a row waiting for a retry may be tried again (`not_before` is quiet hours only).
ALTER TABLE outbox ADD COLUMN next_attempt_at TEXT;
-- The dispatcher's hold on a row while it is `sending`; the token fences its outcome.
ALTER TABLE outbox ADD COLUMN lease_token TEXT;
ALTER TABLE outbox ADD COLUMN lease_until TEXT;
-- Set when an attempt starts: a `sending` row whose lease expired with this set is in doubt.
ALTER TABLE outbox ADD COLUMN attempt_started_at TEXT;
-- The provider's error code of the last failure or delivery receipt (21211, 30007, ...).
ALTER TABLE outbox ADD COLUMN error_code TEXT;
UPDATE outbox SET lane = coalesce(conversation_key || '|' || channel, 'row:' || id),
                  priority = CASE category WHEN 'marketing' THEN 1 ELSE 0 END;
CREATE INDEX outbox_active ON outbox (seq) WHERE status IN ('pending', 'deferred', 'sending');
CREATE INDEX outbox_by_provider_id ON outbox (provider_message_id)
    WHERE provider_message_id IS NOT NULL;

-- Every attempt, kept when a dead row is retried by hand.
CREATE TABLE outbox_attempts (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    outbox_id    TEXT NOT NULL,
    at           TEXT NOT NULL,
    outcome      TEXT NOT NULL,
    error        TEXT,
    error_code   TEXT,
    duration_ms  REAL
);
CREATE INDEX outbox_attempts_by_row ON outbox_attempts (outbox_id, seq);

-- Delivery receipts that arrived before their row knew its provider id (a fast callback).
CREATE TABLE receipts (
    provider_message_id TEXT NOT NULL,
    status              TEXT NOT NULL,
    error_code          TEXT,
    at                  TEXT NOT NULL,
    PRIMARY KEY (provider_message_id, status)
) WITHOUT ROWID;

-- The next free send slot per rate-limited destination, so a restart keeps the spacing.
CREATE TABLE rate_slots (
    key      TEXT PRIMARY KEY,
    next_at  TEXT NOT NULL
) WITHOUT ROWID;

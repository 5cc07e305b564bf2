-- The writes both backends run alike (router.store.writes plans them): one statement per
-- parameter row (PostgreSQL sends a step's rows together, executemany).

-- name: failed_attempt
-- Its routing raised: `processing` until a retry finishes it (or it is `failed`).
UPDATE events SET status = 'processing', attempts = attempts + 1 WHERE id = :id;

-- name: cancel_waiting
UPDATE outbox SET status = 'cancelled', last_error = :reason
WHERE contact_key = :contact_key AND status IN ('pending', 'deferred')
RETURNING id;

-- name: hold_marketing
-- A possible opt-out (consent in review): the contact's waiting marketing waits for a person.
UPDATE outbox SET status = 'deferred', not_before = :held, last_error = :reason
WHERE contact_key = :contact_key AND status IN ('pending', 'deferred') AND category = 'marketing'
RETURNING id;

-- name: insert_ledger
INSERT INTO consent_ledger (contact_key, at, event_id, channel, change, reason)
VALUES (:contact_key, :at, :event_id, :channel, :change, :reason);

-- name: insert_receipt
INSERT INTO receipts (provider_message_id, status, error_code, at)
VALUES (:provider_message_id, :status, :error_code, :at)
ON CONFLICT (provider_message_id, status) DO NOTHING;

-- name: set_delivery
UPDATE outbox SET status = :status, error_code = coalesce(:error_code, error_code)
WHERE id = :id;

-- name: hold_lease_until
UPDATE leases SET token = NULL, owner = NULL, until = :until WHERE lane = :lane;

-- name: upsert_contact
INSERT INTO contacts (key, consent, opted_out_at, timezone, updated_at)
VALUES (:key, :consent, :opted_out_at, :timezone, :updated_at)
ON CONFLICT (key) DO UPDATE SET consent = excluded.consent,
    opted_out_at = excluded.opted_out_at, timezone = coalesce(excluded.timezone, contacts.timezone),
    updated_at = excluded.updated_at;


-- name: map_thread
-- A sent escalation post's Slack thread belongs to its conversation (shared.thread_row).
INSERT INTO threads (thread_key, conversation_key) VALUES (:thread_key, :conversation_key)
ON CONFLICT (thread_key) DO NOTHING;

-- Retention (router.store.writes.prune): the deletes both backends write alike. Each returns
-- the keys it deleted, which the plan counts.

-- name: prune_quarantine
DELETE FROM quarantine WHERE id IN (
  SELECT id FROM quarantine WHERE id < :before_id AND received_at < :before
  ORDER BY id LIMIT :limit)
RETURNING id;

-- name: prune_receipts
DELETE FROM receipts WHERE at < :before
RETURNING provider_message_id;

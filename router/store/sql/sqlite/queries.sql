-- Named queries: `-- name: NAME` starts a block. Parameters are always bound, never formatted.

-- name: insert_events
-- One statement for a whole batch: the store repeats the VALUES row once per event (see
-- SQLiteStore._insert_events). A row whose dedupe key is already stored is left out.
INSERT INTO events (id, source, type, provider_type, dedupe_key, channel, contact_address,
                    conversation_key, status, received_at, occurred_at, correlation_id, body,
                    content_type, raw_body, raw_blob)
VALUES
(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (dedupe_key) DO NOTHING;

-- name: insert_nonce
INSERT INTO nonces (source, nonce, dedupe_key, seen_at)
VALUES (:source, :nonce, :dedupe_key, :seen_at)
ON CONFLICT (source, nonce) DO NOTHING;

-- name: nonce_owner
SELECT dedupe_key FROM nonces WHERE source = :source AND nonce = :nonce;

-- name: schema_version
SELECT coalesce(max(version), 0) FROM schema_migrations;

-- name: claim_scan
-- Unfinished events in arrival order with their lane: the conversation (a Slack thread counts
-- in the conversation it escalated), else the event alone.
SELECT e.id, coalesce(t.conversation_key, e.conversation_key, 'event:' || e.id) AS lane
FROM events e LEFT JOIN threads t ON t.thread_key = e.conversation_key
WHERE e.status IN ('received', 'processing') AND (:after IS NULL OR e.id > :after)
ORDER BY e.id LIMIT :limit;

-- name: busy_lanes
SELECT lane FROM leases WHERE until > :now AND lane IN (SELECT value FROM json_each(:lanes));

-- name: take_lease
INSERT INTO leases (lane, token, owner, until) VALUES (:lane, :token, :owner, :until)
ON CONFLICT (lane) DO UPDATE SET token = excluded.token, owner = excluded.owner,
                                 until = excluded.until;

-- name: claimed_events
SELECT id, body, status, attempts FROM events WHERE id IN (SELECT value FROM json_each(:ids));

-- name: conversations_by_key
SELECT key, state, channel, contact, body, updated_at FROM conversations
WHERE key IN (SELECT value FROM json_each(:keys));

-- name: lease_token
SELECT token FROM leases WHERE lane = :lane;

-- name: release_lease
DELETE FROM leases WHERE lane = :lane AND token = :token;

-- name: finish_event
UPDATE events SET status = :status WHERE id = :id;

-- name: insert_run
INSERT INTO runs (event_id, at, body) VALUES (:event_id, :at, :body);

-- name: upsert_conversation
INSERT INTO conversations (key, state, channel, contact, body, updated_at)
VALUES (:key, :state, :channel, :contact, :body, :updated_at)
ON CONFLICT (key) DO UPDATE SET state = excluded.state, channel = excluded.channel,
    contact = excluded.contact, body = excluded.body, updated_at = excluded.updated_at;

-- name: insert_outbox
INSERT INTO outbox (id, event_id, conversation_key, contact_key, channel, recipient, category,
                    kind, status, not_before, created_at, attempts, last_error,
                    provider_message_id, payload, lane, priority)
VALUES (:id, :event_id, :conversation_key, :contact_key, :channel, :recipient, :category,
        :kind, :status, :not_before, :created_at, :attempts, :last_error,
        :provider_message_id, :payload, :lane, :priority)
ON CONFLICT (id) DO NOTHING
RETURNING id;

-- name: release_held
-- Kept subscribed: the held rows wait for quiet hours only (:not_before), or go at once.
UPDATE outbox SET status = CASE WHEN :not_before IS NULL THEN 'pending' ELSE 'deferred' END,
    not_before = :not_before, last_error = NULL
WHERE contact_key = :contact_key AND status = 'deferred' AND not_before >= :held
RETURNING id;

-- name: set_timer
INSERT INTO timers (conversation_key, timer, due_at) VALUES (:key, :timer, :due_at)
ON CONFLICT (conversation_key, timer) DO UPDATE SET due_at = excluded.due_at;

-- name: clear_timer
DELETE FROM timers WHERE conversation_key = :key AND timer = :timer
  AND (:due_at IS NULL OR due_at = :due_at);

-- name: contacts_by_key
SELECT key, consent, opted_out_at, timezone FROM contacts
WHERE key IN (SELECT value FROM json_each(:keys));

-- name: existing_outbox_ids
SELECT id FROM outbox WHERE id IN (SELECT value FROM json_each(:ids));

-- name: dispatch_scan
-- Rows not finished, in creation order: the dispatcher takes the due head of each lane.
-- Only what choosing needs: the chosen rows are read whole afterwards (`rows_by_id`).
SELECT id, category, status, not_before, next_attempt_at, lane, lease_until, doubt_since
FROM outbox WHERE status IN ('pending', 'deferred', 'sending')
ORDER BY seq LIMIT :limit;

-- name: rows_by_id
SELECT id, event_id, conversation_key, contact_key, channel, recipient, category, kind, status,
       not_before, created_at, attempts, last_error, provider_message_id, payload,
       next_attempt_at, error_code
FROM outbox WHERE id IN (SELECT value FROM json_each(:ids));

-- name: claim_row
-- The doubt window opens with the first attempt and stays open across claims (0008); a row
-- left `sending` with none known (claimed by a previous version) is looked for from its start.
UPDATE outbox SET status = 'sending', lease_token = :token, lease_until = :until,
    doubt_since = coalesce(doubt_since, CASE WHEN status = 'sending' THEN created_at END, :now)
WHERE id = :id AND (status IN ('pending', 'deferred')
                    OR (status = 'sending' AND lease_until <= :now));

-- name: renew_row
UPDATE outbox SET lease_until = :until
WHERE id = :id AND lease_token = :token AND status = 'sending';

-- name: row_lease
SELECT lease_token, status, contact_key, event_id FROM outbox WHERE id = :id;

-- name: finish_sent
-- A row sent: :status `sent`, or on by the receipts that beat this commit. Fenced by :token
-- (a row another attempt's lease took is left alone); returns the id finished.
UPDATE outbox SET status = :status, provider_message_id = :provider_message_id,
    attempts = attempts + 1, last_error = NULL, error_code = :error_code, lease_token = NULL,
    lease_until = NULL, next_attempt_at = NULL
WHERE id = :id AND lease_token = :token AND status = 'sending'
RETURNING id;

-- name: finish_retry
-- :in_doubt (1 or 0): whether a message of the row may be out unrecorded; if so the window
-- stays open and the next attempt looks first.
UPDATE outbox SET status = 'pending', attempts = attempts + :step, last_error = :error,
    error_code = :error_code, next_attempt_at = :next_attempt_at, lease_token = NULL,
    lease_until = NULL, doubt_since = CASE WHEN :in_doubt THEN doubt_since END
WHERE id = :id AND lease_token = :token AND status = 'sending'
RETURNING id;

-- name: finish_dead
-- :in_doubt as finish_retry: a dead row retried by hand looks first if it may be out.
UPDATE outbox SET status = :status, attempts = attempts + 1, last_error = :error,
    error_code = :error_code, lease_token = NULL, lease_until = NULL, next_attempt_at = NULL,
    doubt_since = CASE WHEN :in_doubt THEN doubt_since END
WHERE id = :id AND lease_token = :token AND status = 'sending'
RETURNING id;

-- name: insert_attempts
INSERT INTO outbox_attempts (outbox_id, at, outcome, error, error_code, duration_ms)
VALUES (:outbox_id, :at, :outcome, :error, :error_code, :duration_ms);

-- name: row_by_provider_id
SELECT provider_message_id, id, status FROM outbox
WHERE provider_message_id = :provider_message_id;

-- name: receipts_of
-- The receipts kept for these provider message ids (JSON), each id's in arrival order.
SELECT provider_message_id, status, error_code FROM receipts
WHERE provider_message_id IN (SELECT value FROM json_each(:ids))
ORDER BY provider_message_id, at;

-- name: drop_receipts
DELETE FROM receipts WHERE provider_message_id IN (SELECT value FROM json_each(:ids));

-- name: slots_of
SELECT key, next_at FROM rate_slots WHERE key IN (SELECT value FROM json_each(:keys));

-- name: save_rate_slot
-- A booked slot only moves later (times are sortable text in UTC).
INSERT INTO rate_slots (key, next_at) VALUES (:key, :next_at)
ON CONFLICT (key) DO UPDATE SET next_at = max(next_at, excluded.next_at);

-- name: delay_slot
INSERT INTO rate_slots (key, next_at) VALUES (:key, :until)
ON CONFLICT (key) DO UPDATE SET next_at = max(next_at, excluded.next_at);

-- name: finish_in_doubt
-- Still `sending`, with no holder, until the in-doubt check may run.
UPDATE outbox SET attempts = attempts + 1, last_error = :error, error_code = :error_code,
    lease_token = NULL, lease_until = :until
WHERE id = :id AND lease_token = :token AND status = 'sending'
RETURNING id;

-- name: save_breaker
-- Only newer news replaces what is there (times are sortable text in UTC).
INSERT INTO breakers (key, state, changed_at) VALUES (:key, :state, :changed_at)
ON CONFLICT (key) DO UPDATE SET state = excluded.state, changed_at = excluded.changed_at
WHERE excluded.changed_at > breakers.changed_at;

-- name: prunable_events
-- Retention (Store.prune). A batch of old events whose work looks over, oldest first; the
-- deletes below check again, so a row made meanwhile (a replay) keeps its event.
SELECT e.id FROM events e
WHERE e.id < :before_id AND e.received_at < :before
  AND e.status IN ('processed', 'ignored', 'failed')
  AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.event_id = e.id
                  AND (o.status IN ('pending', 'deferred', 'sending', 'dead')
                       OR o.kind = 'escalation'))
ORDER BY e.id LIMIT :limit;

-- name: prune_attempts
DELETE FROM outbox_attempts WHERE outbox_id IN (
  SELECT id FROM outbox WHERE event_id IN (SELECT value FROM json_each(:ids))
    AND status IN ('sent', 'delivered', 'undelivered', 'failed', 'cancelled')
    AND kind <> 'escalation');

-- name: prune_outbox
DELETE FROM outbox WHERE event_id IN (SELECT value FROM json_each(:ids))
  AND status IN ('sent', 'delivered', 'undelivered', 'failed', 'cancelled')
  AND kind <> 'escalation'
RETURNING id;

-- name: prune_events
DELETE FROM events WHERE id IN (SELECT value FROM json_each(:ids))
  AND status IN ('processed', 'ignored', 'failed')
  AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.event_id = events.id)
RETURNING id;

-- name: prune_runs
DELETE FROM runs WHERE event_id IN (SELECT value FROM json_each(:ids));

-- name: known_dedupe_keys
SELECT dedupe_key FROM events WHERE dedupe_key IN (SELECT value FROM json_each(:keys));

-- name: record_reconcile_success
INSERT INTO reconcile_state (source, last_success, recovered, last_error, last_error_at)
VALUES (:source, :until, :recovered, NULL, NULL)
ON CONFLICT (source) DO UPDATE SET
  last_success = max(coalesce(reconcile_state.last_success, ''), excluded.last_success),
  recovered = reconcile_state.recovered + excluded.recovered,
  last_error = NULL, last_error_at = NULL;


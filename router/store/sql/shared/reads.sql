-- Queries written once for both backends (router.store.common runs them): parameters named
-- `:name`, numbered `$n` for PostgreSQL by router.store.queries.filtered.

-- name: nonce_first_body
-- The raw body of the event a one-time token was first used with.
SELECT e.content_type, e.raw_body, e.raw_blob
FROM nonces n JOIN events e ON e.dedupe_key = n.dedupe_key
WHERE n.source = :source AND n.nonce = :nonce;

-- name: prune_nonces
DELETE FROM nonces WHERE seen_at < :before;

-- name: insert_quarantine
INSERT INTO quarantine (id, source, received_at, reason, content_type, raw_body, raw_blob,
                        correlation_id)
VALUES (:id, :source, :received_at, :reason, :content_type, :raw_body, :raw_blob,
        :correlation_id);

-- name: list_quarantine
SELECT id, source, received_at, reason, content_type, raw_body, raw_blob, correlation_id
FROM quarantine ORDER BY id DESC LIMIT :limit;

-- name: get_event
SELECT body, status FROM events WHERE id = :id;

-- name: get_raw
SELECT content_type, raw_body, raw_blob FROM events WHERE id = :id;

-- name: contact_ledger
SELECT at, event_id, channel, change, reason FROM consent_ledger
WHERE contact_key = :key ORDER BY seq;

-- name: runs_of_event
SELECT body FROM runs WHERE event_id = :event_id ORDER BY seq;

-- name: get_conversation
SELECT key, state, channel, contact, body, updated_at FROM conversations WHERE key = :key;

-- name: attempts_of_row
SELECT at, outcome, error, error_code, duration_ms FROM outbox_attempts
WHERE outbox_id = :id ORDER BY seq;

-- name: escalation_thread
SELECT provider_message_id FROM outbox
WHERE conversation_key = :key AND kind = 'escalation' AND provider_message_id IS NOT NULL
ORDER BY seq DESC LIMIT 1;

-- name: escalation_post
SELECT id, event_id, conversation_key, contact_key, channel, recipient, category, kind, status,
       not_before, created_at, attempts, last_error, provider_message_id, payload,
       next_attempt_at, error_code
FROM outbox
WHERE conversation_key = :key AND kind = 'escalation' AND provider_message_id IS NOT NULL
ORDER BY seq DESC LIMIT 1;

-- name: next_due
-- The next waiting row to fall due after :now: a retry, the end of quiet hours, or an in-doubt
-- row's check.
SELECT min(due) FROM (
    SELECT coalesce(next_attempt_at, not_before) AS due FROM outbox
    WHERE status IN ('pending', 'deferred') AND coalesce(next_attempt_at, not_before) > :now
    UNION ALL
    SELECT lease_until FROM outbox
    WHERE status = 'sending' AND lease_token IS NULL AND lease_until > :now
) AS waiting;

-- name: requeue_dead
-- The doubt window stays: a row that may be out is looked for before it is sent again.
UPDATE outbox SET status = 'pending', attempts = 0, next_attempt_at = NULL,
    lease_token = NULL, lease_until = NULL
WHERE id = :id AND status = 'dead';

-- name: discard_dead
UPDATE outbox SET status = 'cancelled', last_error = :reason WHERE id = :id AND status = 'dead';

-- name: outbox_counts
-- Every row: a scan of the whole table (see outbox_counts_live).
SELECT status, channel, count(*) FROM outbox GROUP BY status, channel;

-- name: outbox_counts_live
-- The rows of records.LIVE only, named here so the planner sees each one (a parameter would
-- hide how few they are): a range of outbox_by_status each, however large the outbox.
SELECT status, channel, count(*) FROM outbox
WHERE status IN ('pending', 'deferred', 'sending', 'dead')
GROUP BY status, channel;

-- name: oldest_due
SELECT min(coalesce(next_attempt_at, not_before, created_at)) FROM outbox
WHERE status IN ('pending', 'deferred') AND coalesce(next_attempt_at, not_before, created_at) <= :now;

-- name: rate_slots
SELECT key, next_at FROM rate_slots;

-- name: breakers
SELECT key, state, changed_at FROM breakers;

-- name: reconcile_state
SELECT source, last_success, recovered, last_error, last_error_at FROM reconcile_state;

-- name: record_reconcile_failure
INSERT INTO reconcile_state (source, recovered, last_error, last_error_at)
VALUES (:source, :recovered, :error, :at)
ON CONFLICT (source) DO UPDATE SET
  recovered = reconcile_state.recovered + excluded.recovered,
  last_error = excluded.last_error, last_error_at = excluded.last_error_at;

-- name: sent_rows_page
-- Rows `sent` (no final receipt yet), newest first below seq :before, one page through
-- outbox_by_status read backwards: `Store.awaiting_receipt` stops at the first row older than
-- its window, so a pass reads the rows of that window only, however large the outbox. Each
-- row's send is its last attempt (outbox_attempts_by_row).
SELECT o.seq, o.channel, o.provider_message_id, o.created_at,
       (SELECT max(a.at) FROM outbox_attempts AS a WHERE a.outbox_id = o.id) AS sent_at
FROM outbox AS o WHERE o.status = 'sent' AND o.seq < :before
ORDER BY o.seq DESC LIMIT :limit;

-- name: probe_commit
-- After a failed ingest commit, /readyz commits this one small row (CommonStore._probe_commit).
INSERT INTO store_probe (id, at) VALUES (1, :at)
ON CONFLICT (id) DO UPDATE SET at = excluded.at;

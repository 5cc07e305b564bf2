-- Named queries for PostgreSQL: `-- name: NAME` starts a block. Parameters are positional
-- ($1, $2, ...), always bound, never formatted; each block says what they are. A block whose
-- parameters are named `:name` is run by router.store.common, through `filtered`, which numbers
-- them. asyncpg prepares each statement once per connection and caches it.

-- name: schema_version
SELECT coalesce(max(version), 0) FROM schema_migrations;

-- name: insert_events
-- A whole ingest batch in one statement, one array per column ($1..$16) plus each row's place
-- in the batch ($17). Rows go in dedupe-key order (two batches never wait on each other's keys
-- in opposite orders); within a key the first submitted wins. Returns the ids stored, and
-- notifies channel $18 with payload $19 (sent at the commit) if any was: the other processes'
-- workers wake without a statement of its own.
WITH stored AS (
INSERT INTO events (id, source, type, provider_type, dedupe_key, channel, contact_address,
                    conversation_key, status, received_at, occurred_at, correlation_id, body,
                    content_type, raw_body, raw_blob)
SELECT id, source, type, provider_type, dedupe_key, channel, contact_address, conversation_key,
       status, received_at, occurred_at, correlation_id, body, content_type, raw_body, raw_blob
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
            $7::text[], $8::text[], $9::text[], $10::timestamptz[], $11::timestamptz[],
            $12::text[], $13::bytea[], $14::text[], $15::bytea[], $16::text[], $17::int[])
     AS t(id, source, type, provider_type, dedupe_key, channel, contact_address,
          conversation_key, status, received_at, occurred_at, correlation_id, body,
          content_type, raw_body, raw_blob, place)
ORDER BY dedupe_key, place
ON CONFLICT (dedupe_key) DO NOTHING
RETURNING id
), woken AS MATERIALIZED (
    SELECT pg_notify($18, $19)
)
SELECT stored.id FROM stored, woken;

-- name: insert_nonce
-- $1 source, $2 nonce, $3 dedupe_key, $4 seen_at. A row back means the token is fresh.
INSERT INTO nonces (source, nonce, dedupe_key, seen_at) VALUES ($1, $2, $3, $4)
ON CONFLICT (source, nonce) DO NOTHING
RETURNING 1;

-- name: nonce_owner
SELECT dedupe_key FROM nonces WHERE source = $1 AND nonce = $2;

-- name: put_blob
INSERT INTO blobs (digest, content) VALUES ($1, $2) ON CONFLICT (digest) DO NOTHING;

-- name: get_blob
SELECT content FROM blobs WHERE digest = $1;

-- name: claim_scan
-- Unfinished events in arrival order with their lane (a Slack thread counts in the
-- conversation it escalated, else the conversation, else the event alone), and whether that
-- lane is leased at $3 (held, or waiting for a retry). $1 after (id cursor), $2 limit.
SELECT s.id, s.lane, EXISTS (SELECT 1 FROM leases l WHERE l.lane = s.lane AND l.until > $3)
FROM (SELECT e.id, coalesce(t.conversation_key, e.conversation_key, 'event:' || e.id) AS lane
      FROM events e LEFT JOIN threads t ON t.thread_key = e.conversation_key
      WHERE e.status IN ('received', 'processing') AND ($1::text IS NULL OR e.id > $1)
      ORDER BY e.id LIMIT $2) s
ORDER BY s.id;

-- name: take_leases
-- Lease the lanes $1 (sorted) with tokens $2 for $3 until $4, where free at $5. Lease rows
-- another claim holds locked right now are skipped, not waited for; a row whose lease is live
-- (another worker's, or a retry wait) is left alone. Returns the lanes taken.
WITH wanted AS (
    SELECT lane, token FROM unnest($1::text[], $2::text[]) AS w(lane, token)
), existing AS (
    SELECT lane FROM leases WHERE lane = ANY($1::text[])
), locked AS (
    SELECT lane FROM leases WHERE lane = ANY($1::text[]) ORDER BY lane FOR UPDATE SKIP LOCKED
)
INSERT INTO leases (lane, token, owner, until)
SELECT w.lane, w.token, $3, $4 FROM wanted w
WHERE w.lane IN (SELECT lane FROM locked) OR w.lane NOT IN (SELECT lane FROM existing)
ORDER BY w.lane
ON CONFLICT (lane) DO UPDATE SET token = excluded.token, owner = excluded.owner,
                                 until = excluded.until
WHERE leases.until <= $5
RETURNING lane;

-- name: claim_events
-- The picked events of the lanes taken that are still unfinished (another worker may have
-- finished some between the scan and the lease). Claiming writes nothing on the event: the
-- lease says it is taken, and the commit writes its outcome.
SELECT id, body, status, attempts FROM events
WHERE id = ANY($1::text[]) AND status IN ('received', 'processing');

-- name: conversations_by_key
SELECT key, state, channel, contact, body, updated_at FROM conversations
WHERE key = ANY($1::text[]);

-- name: lock_leases
-- The current token of each lane being committed, locked until the commit ends (a takeover
-- waits for it), in lane order so two commits never wait on each other in a cycle.
SELECT lane, token FROM leases WHERE lane = ANY($1::text[]) ORDER BY lane FOR UPDATE;

-- name: release_lease
-- The lanes whose lease still carries the tokens (one array each).
DELETE FROM leases l USING unnest(:lane::text[], :token::text[]) AS r(lane, token)
WHERE l.lane = r.lane AND l.token = r.token;

-- name: finish_event
-- One array per column: event ids, their new statuses.
UPDATE events e SET status = f.status FROM unnest(:id::text[], :status::text[]) AS f(id, status)
WHERE e.id = f.id;

-- name: insert_run
-- One array per column, in the order given.
INSERT INTO runs (event_id, at, body)
SELECT event_id, at, body
FROM unnest(:event_id::text[], :at::timestamptz[], :body::bytea[]) WITH ORDINALITY AS r(event_id, at, body, place)
ORDER BY place;

-- name: upsert_conversation
-- One array per column, each key once.
INSERT INTO conversations (key, state, channel, contact, body, updated_at)
SELECT * FROM unnest(:key::text[], :state::text[], :channel::text[], :contact::text[],
                     :body::bytea[], :updated_at::timestamptz[])
ON CONFLICT (key) DO UPDATE SET state = excluded.state, channel = excluded.channel,
    contact = excluded.contact, body = excluded.body, updated_at = excluded.updated_at;

-- name: insert_outbox
-- Many rows in one statement, one array per column, inserted in the order given (so
-- `seq`, their creation order, follows it). Rows already there are left alone; returns the
-- ids made now.
INSERT INTO outbox (id, event_id, conversation_key, contact_key, channel, recipient, category,
                    kind, status, not_before, created_at, attempts, last_error,
                    provider_message_id, payload, lane, priority)
SELECT id, event_id, conversation_key, contact_key, channel, recipient, category, kind, status,
       not_before, created_at, attempts, last_error, provider_message_id, payload, lane, priority
FROM unnest(:id::text[], :event_id::text[], :conversation_key::text[], :contact_key::text[],
            :channel::text[], :recipient::text[], :category::text[], :kind::text[],
            :status::text[], :not_before::timestamptz[], :created_at::timestamptz[],
            :attempts::int[], :last_error::text[], :provider_message_id::text[],
            :payload::bytea[], :lane::text[], :priority::int[])
     WITH ORDINALITY AS r(id, event_id, conversation_key, contact_key, channel, recipient,
                          category, kind, status, not_before, created_at, attempts, last_error,
                          provider_message_id, payload, lane, priority, place)
ORDER BY place
ON CONFLICT (id) DO NOTHING
RETURNING id;

-- name: release_held
-- Kept subscribed: the held rows wait for quiet hours only (:not_before), or go at once;
-- :held is records.HELD_UNTIL.
UPDATE outbox SET status = CASE WHEN :not_before::timestamptz IS NULL THEN 'pending' ELSE 'deferred' END,
    not_before = :not_before, last_error = NULL
WHERE contact_key = :contact_key AND status = 'deferred' AND not_before >= :held
RETURNING id;

-- name: set_timer
-- One array per column (conversation keys, timers, due times), each pair once.
INSERT INTO timers (conversation_key, timer, due_at)
SELECT * FROM unnest(:key::text[], :timer::text[], :due_at::timestamptz[])
ON CONFLICT (conversation_key, timer) DO UPDATE SET due_at = excluded.due_at;

-- name: clear_timer
-- :due_at NULL: whatever it is.
DELETE FROM timers WHERE conversation_key = :key AND timer = :timer
  AND (:due_at::timestamptz IS NULL OR due_at = :due_at);

-- name: contacts_by_key
SELECT key, consent, opted_out_at, timezone FROM contacts WHERE key = ANY(:keys::text[]);

-- name: existing_outbox_ids
SELECT id FROM outbox WHERE id = ANY(:ids::text[]);

-- name: dispatch_scan
-- Rows not finished, in creation order, a page at a time: $1 after (seq cursor, NULL: from
-- the first), $2 limit. The dispatcher takes the due head of each lane.
SELECT id, category, status, not_before, next_attempt_at, lane, lease_until, doubt_since, seq
FROM outbox WHERE status IN ('pending', 'deferred', 'sending')
  AND ($1::bigint IS NULL OR seq > $1)
ORDER BY seq LIMIT $2;

-- name: rows_by_id
SELECT id, event_id, conversation_key, contact_key, channel, recipient, category, kind, status,
       not_before, created_at, attempts, last_error, provider_message_id, payload,
       next_attempt_at, error_code
FROM outbox WHERE id = ANY(:ids::text[]);

-- name: claim_rows
-- Lease the rows $1 with tokens $2 until $3, each only if still claimable at $4; rows another
-- dispatcher has locked right now are skipped. Returns the ids taken (with their token).
-- The doubt window opens with the first attempt and stays open across claims (0008); a row
-- left `sending` with none known (claimed by a previous version) is looked for from its start.
WITH wanted AS (
    SELECT id, token FROM unnest($1::text[], $2::text[]) AS w(id, token)
), free AS (
    SELECT o.id FROM outbox o
    WHERE o.id = ANY($1::text[])
      AND (o.status IN ('pending', 'deferred') OR (o.status = 'sending' AND o.lease_until <= $4))
    ORDER BY o.id
    FOR UPDATE SKIP LOCKED
)
UPDATE outbox o SET status = 'sending', lease_token = w.token, lease_until = $3,
    doubt_since = coalesce(o.doubt_since, CASE WHEN o.status = 'sending' THEN o.created_at END, $4)
FROM wanted w
WHERE o.id = w.id AND o.id IN (SELECT id FROM free)
RETURNING o.id;

-- name: renew_rows
-- Extend the leases of rows still held with these tokens; the ids renewed.
UPDATE outbox o SET lease_until = $3
FROM unnest($1::text[], $2::text[]) AS h(id, token)
WHERE o.id = h.id AND o.lease_token = h.token AND o.status = 'sending'
RETURNING o.id;

-- name: finish_sent
-- Rows sent, all in one statement, one array per column: statuses `sent`, or on by the
-- receipts that beat this commit; tokens, the leases they were sent under. A row whose lease another attempt took meanwhile is left alone (fenced). Returns the
-- ids finished.
UPDATE outbox o SET status = s.status, provider_message_id = s.provider_message_id,
    attempts = o.attempts + 1, last_error = NULL, error_code = s.error_code,
    lease_token = NULL, lease_until = NULL, next_attempt_at = NULL
FROM unnest(:id::text[], :provider_message_id::text[], :status::text[], :error_code::text[],
            :token::text[])
     AS s(id, provider_message_id, status, error_code, token)
WHERE o.id = s.id AND o.lease_token = s.token AND o.status = 'sending'
RETURNING o.id;

-- name: finish_retry
-- Run by name (shared.unsent_finish). :token is the lease token it was attempted under (a row
-- another attempt's lease took is fenced: nothing changes, no row back); :step is 0 for a
-- throttled retry; :in_doubt whether a message of the row may be out unrecorded: if so its
-- doubt window stays open and the next attempt looks first.
UPDATE outbox SET status = 'pending', attempts = attempts + :step, last_error = :error,
    error_code = :error_code, next_attempt_at = :next_attempt_at, lease_token = NULL,
    lease_until = NULL, doubt_since = CASE WHEN :in_doubt::boolean THEN doubt_since END
WHERE id = :id AND lease_token = :token AND status = 'sending'
RETURNING id;

-- name: finish_dead
-- :status dead or cancelled; fenced by :token and :in_doubt as finish_retry (a dead row
-- retried by hand looks first if it may be out).
UPDATE outbox SET status = :status, attempts = attempts + 1, last_error = :error,
    error_code = :error_code, lease_token = NULL, lease_until = NULL, next_attempt_at = NULL,
    doubt_since = CASE WHEN :in_doubt::boolean THEN doubt_since END
WHERE id = :id AND lease_token = :token AND status = 'sending'
RETURNING id;

-- name: finish_in_doubt
-- Still `sending`, with no holder, until the in-doubt check may run (:until); fenced by
-- :token as finish_retry.
UPDATE outbox SET attempts = attempts + 1, last_error = :error, error_code = :error_code,
    lease_token = NULL, lease_until = :until
WHERE id = :id AND lease_token = :token AND status = 'sending'
RETURNING id;

-- name: insert_attempts
-- A commit's attempts in one statement, one array per column, in the order given.
INSERT INTO outbox_attempts (outbox_id, at, outcome, error, error_code, duration_ms)
SELECT outbox_id, at, outcome, error, error_code, duration_ms
FROM unnest(:outbox_id::text[], :at::timestamptz[], :outcome::text[], :error::text[],
            :error_code::text[], :duration_ms::float8[])
     WITH ORDINALITY AS a(outbox_id, at, outcome, error, error_code, duration_ms, place)
ORDER BY place;

-- name: row_by_provider_id
SELECT provider_message_id, id, status FROM outbox
WHERE provider_message_id = :provider_message_id FOR UPDATE;

-- name: receipts_of
-- The receipts kept for these provider message ids, each id's in arrival order.
SELECT provider_message_id, status, error_code FROM receipts
WHERE provider_message_id = ANY(:ids::text[]) ORDER BY provider_message_id, at;

-- name: drop_receipts
DELETE FROM receipts WHERE provider_message_id = ANY(:ids::text[]);

-- name: add_slots
-- Every key a claim books has a row to lock (a new key: free since the epoch).
INSERT INTO rate_slots (key, next_at)
SELECT k, '1970-01-01T00:00:00Z'::timestamptz FROM unnest($1::text[]) AS k
ON CONFLICT (key) DO NOTHING;

-- name: lock_slots
SELECT key, next_at FROM rate_slots WHERE key = ANY($1::text[]) ORDER BY key FOR UPDATE;

-- name: save_slots
-- A booked slot only moves later.
UPDATE rate_slots r SET next_at = greatest(r.next_at, s.next_at)
FROM unnest($1::text[], $2::timestamptz[]) AS s(key, next_at)
WHERE r.key = s.key;

-- name: delay_slot
INSERT INTO rate_slots (key, next_at) VALUES (:key, :until)
ON CONFLICT (key) DO UPDATE SET next_at = greatest(rate_slots.next_at, excluded.next_at);

-- name: save_breakers
-- Only newer news replaces what is there; keys in order, so two savers never deadlock.
INSERT INTO breakers (key, state, changed_at)
SELECT k, s, c FROM unnest($1::text[], $2::text[], $3::timestamptz[]) AS n(k, s, c) ORDER BY k
ON CONFLICT (key) DO UPDATE SET state = excluded.state, changed_at = excluded.changed_at
WHERE excluded.changed_at > breakers.changed_at;

-- name: prunable_events
-- Retention (Store.prune). A batch of old events whose work looks over, oldest first; the
-- deletes below check again, so a row made meanwhile (a replay) keeps its event.
-- Rows another transaction holds are left for later.
SELECT e.id FROM events e
WHERE e.id < :before_id AND e.received_at < :before
  AND e.status IN ('processed', 'ignored', 'failed')
  AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.event_id = e.id
                  AND (o.status IN ('pending', 'deferred', 'sending', 'dead')
                       OR o.kind = 'escalation'))
ORDER BY e.id LIMIT :limit
FOR UPDATE OF e SKIP LOCKED;

-- name: prune_attempts
DELETE FROM outbox_attempts WHERE outbox_id IN (
  SELECT id FROM outbox WHERE event_id = ANY(:ids::text[])
    AND status IN ('sent', 'delivered', 'undelivered', 'failed', 'cancelled')
    AND kind <> 'escalation');

-- name: prune_outbox
DELETE FROM outbox WHERE event_id = ANY(:ids::text[])
  AND status IN ('sent', 'delivered', 'undelivered', 'failed', 'cancelled')
  AND kind <> 'escalation'
RETURNING id;

-- name: prune_events
DELETE FROM events e WHERE e.id = ANY(:ids::text[])
  AND e.status IN ('processed', 'ignored', 'failed')
  AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.event_id = e.id)
RETURNING e.id;

-- name: prune_runs
DELETE FROM runs WHERE event_id = ANY(:ids::text[]);

-- name: storage_use
-- The database's size on disk and the blob table's (with its TOAST and index): both read
-- the catalog and the files' sizes, not the rows.
SELECT pg_database_size(current_database()), pg_total_relation_size('blobs');

-- name: known_dedupe_keys
SELECT dedupe_key FROM events WHERE dedupe_key = ANY(:keys::text[]);

-- name: record_reconcile_success
-- A pass's `until` never moves the mark back.
INSERT INTO reconcile_state (source, last_success, recovered, last_error, last_error_at)
VALUES (:source, :until, :recovered, NULL, NULL)
ON CONFLICT (source) DO UPDATE SET
  last_success = greatest(reconcile_state.last_success, excluded.last_success),
  recovered = reconcile_state.recovered + excluded.recovered,
  last_error = NULL, last_error_at = NULL;


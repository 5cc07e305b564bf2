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

-- name: list_events
SELECT body, status FROM events
WHERE (:source IS NULL OR source = :source)
  AND (:type IS NULL OR type = :type)
  AND (:status IS NULL OR status = :status)
  AND (:since IS NULL OR received_at >= :since)
  AND (:until IS NULL OR received_at < :until)
  AND (:before IS NULL OR id < :before)
ORDER BY id DESC LIMIT :limit;

-- name: get_event
SELECT body, status FROM events WHERE id = :id;

-- name: get_raw
SELECT content_type, raw_body, raw_blob FROM events WHERE id = :id;

-- name: probe_commit
INSERT INTO store_probe (id, at) VALUES (1, :at)
ON CONFLICT (id) DO UPDATE SET at = excluded.at;

-- name: schema_version
SELECT coalesce(max(version), 0) FROM schema_migrations;

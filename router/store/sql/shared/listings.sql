-- Listings written once for both backends: each is filtered (router.store.queries.filtered),
-- its parameters named `:name` (numbered `$n` for PostgreSQL), and a line ending in
-- `-- optional` kept only when its parameter is given, so the planner sees the index that
-- filter can use.

-- name: list_events
-- :since_id and :until_id bound the primary key from :since and :until (shared.id_bounds).
SELECT body, status, id FROM events
WHERE TRUE
  AND source = :source                -- optional
  AND type = :type                    -- optional
  AND status = :status                -- optional
  AND id >= :since_id                 -- optional
  AND received_at >= :since           -- optional
  AND id < :until_id                  -- optional
  AND received_at < :until            -- optional
  AND id < :before                    -- optional
ORDER BY id DESC LIMIT :limit;

-- name: list_outbox
-- :before is a row id, the cursor of the previous page.
SELECT id, event_id, conversation_key, contact_key, channel, recipient, category, kind, status,
       not_before, created_at, attempts, last_error, provider_message_id, payload,
       next_attempt_at, error_code
FROM outbox
WHERE TRUE
  AND status = :status                -- optional
  AND channel = :channel              -- optional
  AND recipient = :recipient          -- optional
  AND event_id = :event_id            -- optional
  AND seq < (SELECT seq FROM outbox WHERE id = :before)  -- optional
ORDER BY seq DESC LIMIT :limit;

-- name: list_conversations
SELECT key, state, channel, contact, body, updated_at FROM conversations
WHERE TRUE
  AND state = :state                  -- optional
ORDER BY updated_at DESC LIMIT :limit;

-- name: list_timers
SELECT conversation_key, timer, due_at FROM timers
WHERE TRUE
  AND due_at < :due_before            -- optional
ORDER BY due_at;

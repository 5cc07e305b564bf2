-- What `switchboard status` counts, written once for both backends. Each count reads an index
-- that holds only the rows it counts (or a range of one), never a scan of a table that only
-- grows: EXPLAIN checks each plan on both backends (tests/router/test_store_status.py).

-- name: status_events
-- Events not yet routed and the oldest of them (its id, a ULID of its received_at): the
-- partial index events_unfinished; failed events: the partial index events_failed (0009).
SELECT
    (SELECT count(*) FROM events WHERE status IN ('received', 'processing')),
    (SELECT min(id) FROM events WHERE status IN ('received', 'processing')),
    (SELECT count(*) FROM events WHERE status = 'failed');

-- name: status_escalations
-- Conversations handed to people, not yet claimed and claimed: ranges of conversations_by_state.
SELECT
    (SELECT count(*) FROM conversations WHERE state = 'escalated'),
    (SELECT count(*) FROM conversations WHERE state = 'agent');

-- name: status_outbox_due
-- Waiting rows whose time has come (what `oldest_due` dates): ranges of outbox_by_status.
SELECT count(*), min(coalesce(next_attempt_at, not_before, created_at)) FROM outbox
WHERE status IN ('pending', 'deferred')
  AND coalesce(next_attempt_at, not_before, created_at) <= :now;

-- Slack message events are keyed `slack:CHANNEL:TS` (SPEC §3, §12), no longer by the Events
-- API event_id, so a reply delivered by the Events API and the same reply read back by
-- reconciliation are one event. Re-key the stored ones (column and the event's JSON alike) so
-- a message stored before the upgrade is a duplicate when a pass reads it back. Should two
-- stored events be one message, the older takes the key and the other keeps its own.
-- The JSON is edited as text (`json`, not `jsonb`: jsonb refuses a text holding \u0000, and
-- would reorder the body): the event's encoder writes `"dedupe_key":"..."` compactly.
WITH parsed AS (
    SELECT id, dedupe_key, convert_from(body, 'UTF8') AS j FROM events WHERE source = 'slack'
), rekeyed AS (
    SELECT DISTINCT ON (key) id, dedupe_key, j, key
    FROM (
        SELECT id, dedupe_key, j,
               'slack:' || (j::json -> 'data' ->> 'channel') || ':' || (j::json -> 'data' ->> 'ts')
                   AS key
        FROM parsed
        WHERE j::json -> 'data' ->> 'event_type' = 'message'
    ) AS candidates
    WHERE key IS NOT NULL AND key <> dedupe_key
    ORDER BY key, id
)
UPDATE events
SET dedupe_key = rekeyed.key,
    body = convert_to(
        replace(rekeyed.j, '"dedupe_key":' || to_json(rekeyed.dedupe_key)::text,
                '"dedupe_key":' || to_json(rekeyed.key)::text),
        'UTF8')
FROM rekeyed
WHERE events.id = rekeyed.id
  AND NOT EXISTS (SELECT 1 FROM events other WHERE other.dedupe_key = rekeyed.key);

-- Slack message events are keyed `slack:CHANNEL:TS` (SPEC §3, §12), no longer by the Events
-- API event_id, so a reply delivered by the Events API and the same reply read back by
-- reconciliation are one event. Re-key the stored ones (column and the event's JSON alike) so
-- a message stored before the upgrade is a duplicate when a pass reads it back. `OR IGNORE`:
-- should two stored events be one message, the second keeps its old key.
WITH rekeyed AS (
    SELECT id, 'slack:' || json_extract(j, '$.data.channel') || ':' || json_extract(j, '$.data.ts')
               AS key, j
    FROM (SELECT id, CAST(body AS TEXT) AS j FROM events WHERE source = 'slack')
    WHERE json_extract(j, '$.data.event_type') = 'message'
      AND json_extract(j, '$.data.channel') IS NOT NULL
      AND json_extract(j, '$.data.ts') IS NOT NULL
)
UPDATE OR IGNORE events
SET dedupe_key = rekeyed.key,
    body = CAST(json_set(rekeyed.j, '$.dedupe_key', rekeyed.key) AS BLOB)
FROM rekeyed
WHERE events.id = rekeyed.id AND events.dedupe_key <> rekeyed.key;

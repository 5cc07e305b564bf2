-- `switchboard status` counts failed events (SPEC §12). No index held them: the count read
-- every event ever stored. This partial index holds the failed ones only, so no other event
-- pays for it at ingest or when it is processed.
CREATE INDEX events_failed ON events (id) WHERE status = 'failed';

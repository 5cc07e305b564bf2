-- `events list --since/--until` (and `replay`, `rules diff`) bound the primary key instead:
-- an event's id is a ULID made from its `received_at`, to the millisecond, so a time range
-- is an id range, read in the listing's own order without a sort. Every event paid for this
-- index at ingest (and, on PostgreSQL, again when its status changed).
DROP INDEX IF EXISTS events_by_received;

-- Listings by source and type go newest first by id, a page at a time (`replay`, `rules
-- diff`): with the id in the index, each page is a range of it, not a sort of every match.
DROP INDEX IF EXISTS events_by_source_type;
CREATE INDEX events_by_source_type ON events (source, type, id);

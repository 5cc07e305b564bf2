-- No query reads events by conversation (a conversation's history is kept on its row, and the
-- claim finds unfinished events through `events_unfinished`), yet every event paid for this
-- index at ingest and, on PostgreSQL, again when its status changed (not a HOT update).
DROP INDEX IF EXISTS events_by_conversation;

-- Indexes every event and outbox row paid for and almost none used.
--
-- No query reads events by conversation (a conversation's history is kept on its row, and the
-- claim finds unfinished events through `events_unfinished`), yet every event paid for this
-- index at ingest and, on PostgreSQL, again when its status changed (not a HOT update).
DROP INDEX IF EXISTS events_by_conversation;

-- Outbox rows are read by conversation only to find its latest escalation post (its Slack
-- thread): index those alone, not every reply at its insert, claim and finish.
DROP INDEX IF EXISTS outbox_by_conversation;
CREATE INDEX outbox_escalations ON outbox (conversation_key, seq) WHERE kind = 'escalation';

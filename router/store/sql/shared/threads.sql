-- name: open_threads
-- The Slack thread of every escalation post of a conversation handed to people (`escalated`,
-- `agent`): what a Slack reconciliation pass reads back (SPEC §12). A range of
-- conversations_by_state, then each conversation's posts through outbox_escalations.
SELECT o.recipient, o.provider_message_id, c.key
FROM conversations c
JOIN outbox o ON o.conversation_key = c.key AND o.kind = 'escalation'
WHERE c.state IN ('escalated', 'agent')
  AND o.channel = 'slack' AND o.provider_message_id IS NOT NULL
ORDER BY c.key, o.seq;

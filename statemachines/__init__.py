"""Conversation and consent machines (SPEC §7), pure: no I/O, no clock, no store.

- `statemachines.conversation.apply(conversation, trigger, context, policy) -> Outcome`
- `statemachines.consent.classify`, `on_keyword`, `on_send_error`, `may_send`, `contact_key`
- `statemachines.quiet_hours.not_before(now, category, zone, number, compliance)`

Definitions are data in `statemachines.definitions`; commands are in `statemachines.effects`.
"""

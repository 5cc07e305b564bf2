"""Conversation and consent machines (SPEC §7), pure: no I/O, no clock, no store.

- `statemachines.conversation.apply(conversation, trigger, context, policy) -> Outcome`
- `statemachines.revocation.classify(text, opt_out_type) -> Keyword | None`: opt_out, review
  (a possible opt-out a person decides), opt_in or help, on the message normalised
- `statemachines.consent.on_keyword`, `on_decision`, `on_send_error`, `gate`, `contact_key`
- `statemachines.quiet_hours.not_before(now, category, zone, number, compliance)`

Definitions are data in `statemachines.definitions`; commands are in `statemachines.effects`.
"""

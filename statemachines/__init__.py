"""Conversation and consent state machines (SPEC §7): not built yet; the issue that adds
conversations and the outbox will define them here as data (states and transitions)."""

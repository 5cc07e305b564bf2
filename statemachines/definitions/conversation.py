"""The conversation machine (SPEC §7) as data: bot -> escalated -> agent -> closed.

Guards (`conditions`/`unless`) and callbacks (`after`) name methods of the per-event model in
`statemachines.conversation`; callbacks only append commands, they never do I/O. Where one trigger
has several rows for a source, `transitions` takes the first whose guards pass.
"""

from __future__ import annotations

from typing import Any

BOT, ESCALATED, AGENT, CLOSED = "bot", "escalated", "agent", "closed"
OPEN = [BOT, ESCALATED, AGENT]
WITH_PEOPLE = [ESCALATED, AGENT]

STATES: list[str] = [BOT, ESCALATED, AGENT, CLOSED]

TRANSITIONS: list[dict[str, Any]] = [
    # A rule's `escalate` action: hand the conversation to people.
    {"trigger": "escalate", "source": BOT, "dest": ESCALATED, "after": "post_escalation"},
    # Slack button "Claim": an agent takes it.
    {
        "trigger": "claim",
        "source": ESCALATED,
        "dest": AGENT,
        "conditions": "has_agent",
        "after": "note_claim",
    },
    # A reply in the escalation thread claims the conversation implicitly, then is relayed.
    {
        "trigger": "agent_reply",
        "source": ESCALATED,
        "dest": AGENT,
        "conditions": ["has_agent", "has_message"],
        "after": ["note_claim", "relay_to_customer"],
    },
    {
        "trigger": "agent_reply",
        "source": AGENT,
        "dest": None,
        "conditions": "has_message",
        "after": "relay_to_customer",
    },
    # Slack buttons "Resolve" and "Back to bot".
    {"trigger": "resolve", "source": WITH_PEOPLE, "dest": CLOSED, "after": "end_escalation"},
    {"trigger": "back_to_bot", "source": WITH_PEOPLE, "dest": BOT, "after": "end_escalation"},
    # A customer message: reopens a closed conversation; with people, it goes to the thread.
    {
        "trigger": "inbound",
        "source": CLOSED,
        "dest": BOT,
        "conditions": "has_message",
        "after": "note_inbound",
    },
    {
        "trigger": "inbound",
        "source": BOT,
        "dest": None,
        "conditions": "has_message",
        "after": "note_inbound",
    },
    {
        "trigger": "inbound",
        "source": WITH_PEOPLE,
        "dest": None,
        "conditions": "has_message",
        "after": ["note_inbound", "relay_to_thread"],
    },
    # The claim-timeout timer: one reminder, and only once the timeout has really passed.
    {
        "trigger": "remind",
        "source": ESCALATED,
        "dest": None,
        "conditions": "claim_overdue",
        "unless": "already_reminded",
        "after": "post_reminder",
    },
    # The inactivity timer: a stale timer (activity since it was set) is refused by the guard.
    {
        "trigger": "inactive",
        "source": OPEN,
        "dest": CLOSED,
        "conditions": "idle_long_enough",
        "after": "end_escalation",
    },
]

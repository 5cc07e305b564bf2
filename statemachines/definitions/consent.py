"""The consent machine (SPEC §7) as data: subscribed <-> opted_out, per contact across channels,
with `review` between them while a person decides whether a message was a revocation.

Callbacks name methods of the per-event model in `statemachines.consent`; they append the
ledger entry and commands, never do I/O.
"""

from __future__ import annotations

from typing import Any

SUBSCRIBED, OPTED_OUT, REVIEW = "subscribed", "opted_out", "review"

STATES: list[str] = [SUBSCRIBED, OPTED_OUT, REVIEW]
_CAN_OPT_OUT = [SUBSCRIBED, REVIEW]

TRANSITIONS: list[dict[str, Any]] = [
    # STOP and its kin: confirm once, at once, and cancel everything still waiting (the
    # marketing held by a review too).
    {
        "trigger": "opt_out",
        "source": _CAN_OPT_OUT,
        "dest": OPTED_OUT,
        "after": ["record", "cancel_pending", "confirm_opt_out"],
    },
    # A repeated STOP changes nothing and sends nothing; cancelling again is harmless and
    # catches any row that slipped in.
    {"trigger": "opt_out", "source": OPTED_OUT, "dest": None, "after": "cancel_pending"},
    # Twilio error 21610 (the carrier holds a STOP): no confirmation, it could not be delivered.
    {
        "trigger": "carrier_opt_out",
        "source": _CAN_OPT_OUT,
        "dest": OPTED_OUT,
        "after": ["record", "cancel_pending"],
    },
    {
        "trigger": "opt_in",
        "source": OPTED_OUT,
        "dest": SUBSCRIBED,
        "after": ["record", "confirm_opt_in"],
    },
    # START while in review: the customer has said what they want; nothing was stopped, so
    # there is nothing to confirm.
    {"trigger": "opt_in", "source": REVIEW, "dest": SUBSCRIBED, "after": ["record", "release"]},
    {"trigger": "help", "source": STATES, "dest": None, "after": "answer_help"},
    # A message that may be a revocation (`cancel my order`): marketing waits, people decide.
    {
        "trigger": "possible_opt_out",
        "source": SUBSCRIBED,
        "dest": REVIEW,
        "after": ["record", "hold_marketing", "ask_people"],
    },
    # Another one while in review: ask again (the first question may have been closed
    # unanswered); holding again catches marketing made since.
    {
        "trigger": "possible_opt_out",
        "source": REVIEW,
        "dest": None,
        "after": ["hold_marketing", "ask_people"],
    },
    # The person's answer (Slack buttons, console): only while in review.
    {
        "trigger": "decide_opt_out",
        "source": REVIEW,
        "dest": OPTED_OUT,
        "after": ["record", "cancel_pending", "confirm_opt_out"],
    },
    {
        "trigger": "keep_subscribed",
        "source": REVIEW,
        "dest": SUBSCRIBED,
        "after": ["record", "release"],
    },
]

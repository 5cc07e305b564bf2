"""The consent machine (SPEC §7) as data: subscribed <-> opted_out, per contact across channels.

Callbacks name methods of the per-event model in `statemachines.consent`; they append the
ledger entry and commands, never do I/O.
"""

from __future__ import annotations

from typing import Any

SUBSCRIBED, OPTED_OUT = "subscribed", "opted_out"

STATES: list[str] = [SUBSCRIBED, OPTED_OUT]

TRANSITIONS: list[dict[str, Any]] = [
    # STOP and its kin: confirm once, at once, and cancel everything still waiting.
    {
        "trigger": "opt_out",
        "source": SUBSCRIBED,
        "dest": OPTED_OUT,
        "after": ["record", "cancel_pending", "confirm_opt_out"],
    },
    # A repeated STOP changes nothing and sends nothing; cancelling again is harmless and
    # catches any row that slipped in.
    {"trigger": "opt_out", "source": OPTED_OUT, "dest": None, "after": "cancel_pending"},
    # Twilio error 21610 (the carrier holds a STOP): no confirmation, it could not be delivered.
    {
        "trigger": "carrier_opt_out",
        "source": SUBSCRIBED,
        "dest": OPTED_OUT,
        "after": ["record", "cancel_pending"],
    },
    {
        "trigger": "opt_in",
        "source": OPTED_OUT,
        "dest": SUBSCRIBED,
        "after": ["record", "confirm_opt_in"],
    },
    {"trigger": "help", "source": STATES, "dest": None, "after": "answer_help"},
]

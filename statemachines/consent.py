"""Consent (SPEC §7), run purely: the keyword classifier, the contact key, the consent machine
and the send gate.

Consent is kept per contact, across channels: `contact_key` makes `+1555...` on SMS and
`whatsapp:+1555...` one contact. Every change yields a `LedgerEntry`, the proof of when a
revocation was honoured.
"""

from __future__ import annotations

import functools
from datetime import datetime
from enum import StrEnum

import msgspec
import phonenumbers

from router.config import ComplianceConfig
from statemachines import _engine
from statemachines.definitions import consent as definition
from statemachines.effects import (
    AskPeople,
    CancelPending,
    Effect,
    HoldMarketing,
    Notice,
    ReleaseHeld,
    SendNotice,
)
from statemachines.revocation import KEYWORDS, OPT_OUT_TYPES, Keyword, KeywordKind, classify

__all__ = [
    "KEYWORDS",
    "OPT_OUT_TYPES",
    "ConsentContext",
    "ConsentOutcome",
    "ConsentState",
    "Decision",
    "Gate",
    "Keyword",
    "KeywordKind",
    "LedgerEntry",
    "classify",
    "contact_key",
    "gate",
    "on_decision",
    "on_keyword",
    "on_send_error",
]


class ConsentState(StrEnum):
    SUBSCRIBED = definition.SUBSCRIBED
    OPTED_OUT = definition.OPTED_OUT
    #: A message may have been a revocation: marketing is held until a person decides.
    REVIEW = definition.REVIEW


class Decision(StrEnum):
    """A person's answer to a possible opt-out (Slack buttons, console)."""

    OPT_OUT = "opt_out"
    KEEP_SUBSCRIBED = "keep_subscribed"


class Gate(StrEnum):
    """What the send gate does with a row."""

    SEND = "send"
    #: Kept waiting until a person decides (a `marketing` row to a contact in review).
    HOLD = "hold"
    CANCEL = "cancel"


@functools.lru_cache(maxsize=65_536)
def contact_key(address: str) -> str:
    """One key per person across channels: `whatsapp:+1 555...` and `+1555...` -> `+1555...`;
    emails are lower-cased; anything else (a Slack user id) is kept as given. Cached: parsing
    a number costs more than the rest of routing a message, and a batch asks several times."""
    bare = address.strip().removeprefix("whatsapp:").removeprefix("sms:").strip()
    if bare.startswith("+"):
        try:
            number = phonenumbers.parse(bare, None)
        except phonenumbers.NumberParseException:
            return bare
        return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    return bare.lower() if "@" in bare else bare


class LedgerEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One consent change, kept forever: `contacts show` prints these."""

    at: datetime
    event_id: str
    contact_key: str
    channel: str | None
    #: The state after the change.
    change: ConsentState
    #: The keyword (`STOP`, `OptOutType=STOP`) or another reason (`twilio error 21610`).
    reason: str


class ConsentContext(msgspec.Struct, frozen=True, kw_only=True):
    """What the event brings: when, which event, and where the keyword came from."""

    event_id: str
    now: datetime
    #: The address as written from (`whatsapp:+1555...`): confirmations answer there.
    address: str
    channel: str | None = None


class ConsentOutcome(msgspec.Struct, frozen=True, kw_only=True):
    """The state to save, the ledger entry to append (on a change) and the commands."""

    state: ConsentState
    ledger: LedgerEntry | None = None
    effects: tuple[Effect, ...] = ()
    #: True when the message was a consent keyword the rules must not see.
    consumed: bool = False
    refused: str | None = None


_MACHINE = _engine.build(definition.STATES, definition.TRANSITIONS)
_TRIGGERS = {
    KeywordKind.OPT_OUT: "opt_out",
    KeywordKind.OPT_IN: "opt_in",
    KeywordKind.HELP: "help",
    KeywordKind.REVIEW: "possible_opt_out",
}
_DECISIONS = {Decision.OPT_OUT: "decide_opt_out", Decision.KEEP_SUBSCRIBED: "keep_subscribed"}
#: Twilio: "Attempt to send to unsubscribed recipient" (the carrier or Twilio holds a STOP).
TWILIO_UNSUBSCRIBED = 21610


def on_keyword(
    state: ConsentState, keyword: Keyword, context: ConsentContext, compliance: ComplianceConfig
) -> ConsentOutcome:
    """Apply a classified keyword. An opt-in keyword that changes nothing (a `YES` from a
    subscribed contact) is not consumed: it is an ordinary answer, and the rules see it. A
    possible opt-out is never consumed: the message goes to the conversation (and, as
    `AskPeople` says, to people), and from an opted-out contact it is an ordinary message."""
    reason = keyword.word
    if keyword.kind is KeywordKind.REVIEW:
        reason = f"possible opt-out: {keyword.word}"
    outcome = _fire(state, _TRIGGERS[keyword.kind], reason, context, compliance)
    consumed = (
        outcome.refused is None or keyword.kind is not KeywordKind.OPT_IN
    ) and keyword.kind is not KeywordKind.REVIEW
    return msgspec.structs.replace(outcome, consumed=consumed)


def on_decision(
    state: ConsentState,
    decision: Decision,
    who: str,
    context: ConsentContext,
    compliance: ComplianceConfig,
) -> ConsentOutcome:
    """A person's answer to a possible opt-out; refused unless the contact is in review (a
    second click, or a click after the customer sent STOP or START, changes nothing)."""
    reason = f"{decision.value.replace('_', ' ')}, decided by {who}"
    return _fire(state, _DECISIONS[decision], reason, context, compliance)


def on_send_error(
    state: ConsentState, error_code: int, context: ConsentContext, compliance: ComplianceConfig
) -> ConsentOutcome:
    """A send failed: Twilio 21610 means the contact is opted out at the carrier, so record it
    and cancel what is pending (no confirmation: it could not be delivered)."""
    if error_code != TWILIO_UNSUBSCRIBED:
        return ConsentOutcome(state=state, refused=f"error {error_code} is not a consent signal")
    return _fire(state, "carrier_opt_out", f"twilio error {error_code}", context, compliance)


def gate(state: ConsentState, category: str, notice: Notice | None = None) -> Gate:
    """The send gate, checked when a row is made and again before it leaves. After an opt-out
    nothing of any `category` goes, except the compliance notices themselves: the opt-out
    confirmation (made as the state changes), an opt-in confirmation, and a HELP answer (carrier
    rules require HELP to be answered whatever the opt-in status). In review, `marketing` is
    held; transactional and conversational messages still go."""
    if notice is not None or state is ConsentState.SUBSCRIBED:
        return Gate.SEND
    if state is ConsentState.REVIEW:
        return Gate.HOLD if category == "marketing" else Gate.SEND
    return Gate.CANCEL


def _fire(
    state: ConsentState,
    trigger: str,
    reason: str,
    context: ConsentContext,
    compliance: ComplianceConfig,
) -> ConsentOutcome:
    run = _Run(context, reason, compliance)
    refused = _engine.fire(_MACHINE, run, state, trigger)
    if refused is not None:
        return ConsentOutcome(state=state, refused=refused)
    new_state = ConsentState(run.state)
    ledger = run.ledger(new_state) if run.changed else None
    return ConsentOutcome(state=new_state, ledger=ledger, effects=tuple(run.effects))


class _Run:
    """The per-event model of the consent machine."""

    state: str

    def __init__(self, context: ConsentContext, reason: str, compliance: ComplianceConfig) -> None:
        self.context, self.reason, self.compliance = context, reason, compliance
        self.effects: list[Effect] = []
        self.changed = False

    def ledger(self, change: ConsentState) -> LedgerEntry:
        ctx = self.context
        return LedgerEntry(
            at=ctx.now,
            event_id=ctx.event_id,
            contact_key=contact_key(ctx.address),
            channel=ctx.channel,
            change=change,
            reason=self.reason,
        )

    def record(self) -> None:
        self.changed = True

    def cancel_pending(self) -> None:
        self.effects.append(CancelPending(contact_key=contact_key(self.context.address)))

    def confirm_opt_out(self) -> None:
        self._notice(Notice.OPT_OUT_CONFIRMATION, self.compliance.stop_confirmation)

    def confirm_opt_in(self) -> None:
        self._notice(Notice.OPT_IN_CONFIRMATION, self.compliance.start_confirmation)

    def answer_help(self) -> None:
        self._notice(Notice.HELP, self.compliance.help_text)

    def hold_marketing(self) -> None:
        self.effects.append(HoldMarketing(contact_key=contact_key(self.context.address)))

    def release(self) -> None:
        self.effects.append(ReleaseHeld(contact_key=contact_key(self.context.address)))

    def ask_people(self) -> None:
        self.effects.append(AskPeople(reason=self.reason))

    def _notice(self, notice: Notice, text: str) -> None:
        ctx = self.context
        self.effects.append(
            SendNotice(notice=notice, channel=ctx.channel, to=ctx.address, text=text)
        )

"""Consent (SPEC §7), run purely: the keyword classifier, the contact key, the consent machine
and the send gate.

Consent is kept per contact, across channels: `contact_key` makes `+1555...` on SMS and
`whatsapp:+1555...` one contact. Every change yields a `LedgerEntry`, the proof of when a
revocation was honoured.
"""

from __future__ import annotations

import functools
import re
import string
import unicodedata
from datetime import datetime
from enum import StrEnum

import msgspec
import phonenumbers

from router.config import ComplianceConfig
from statemachines import _engine
from statemachines.definitions import consent as definition
from statemachines.effects import CancelPending, Effect, Notice, SendNotice


class ConsentState(StrEnum):
    SUBSCRIBED = definition.SUBSCRIBED
    OPTED_OUT = definition.OPTED_OUT


class KeywordKind(StrEnum):
    OPT_OUT = "opt_out"
    OPT_IN = "opt_in"
    HELP = "help"


#: SPEC §7. "OPT OUT" with a space is counted by the FCC (47 CFR 64.1200(a)(10)), not by Twilio.
KEYWORDS: dict[str, KeywordKind] = {
    **dict.fromkeys(
        ["STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT", "OPT OUT"],
        KeywordKind.OPT_OUT,
    ),
    **dict.fromkeys(["START", "UNSTOP", "YES"], KeywordKind.OPT_IN),
    **dict.fromkeys(["HELP", "INFO"], KeywordKind.HELP),
}
#: Twilio's `OptOutType` form field, sent when its Advanced Opt-Out recognised a keyword.
OPT_OUT_TYPES: dict[str, KeywordKind] = {
    "STOP": KeywordKind.OPT_OUT,
    "START": KeywordKind.OPT_IN,
    "HELP": KeywordKind.HELP,
}
_SPACES = re.compile(r"\s+")
#: ASCII punctuation as people mean it (`<`, `+`, `~` are Unicode symbols, not punctuation).
_ASCII_PUNCTUATION = frozenset(string.punctuation)


class Keyword(msgspec.Struct, frozen=True, kw_only=True):
    """A recognised compliance keyword: what it means and the word as normalised."""

    kind: KeywordKind
    #: `STOP`, `OPT OUT`, ... or `OptOutType=STOP`: what the ledger records as the reason.
    word: str


def classify(text: str | None, opt_out_type: str | None = None) -> Keyword | None:
    """The keyword a whole message is, if any: case-insensitive, trimmed, trailing punctuation
    ignored. Twilio's `OptOutType` wins, as Twilio has already acted on it."""
    given = (opt_out_type or "").strip().upper()
    provider = OPT_OUT_TYPES.get(given)
    if provider is not None:
        return Keyword(kind=provider, word=f"OptOutType={given}")
    word = _normalise(text or "")
    kind = KEYWORDS.get(word)
    return Keyword(kind=kind, word=word) if kind is not None else None


def _normalise(text: str) -> str:
    """`  Opt   out!! ` -> `OPT OUT`: trailing punctuation and spaces go, inner runs of
    whitespace become one space."""
    trimmed = text.strip()
    while trimmed and _is_trailing_noise(trimmed[-1]):
        trimmed = trimmed[:-1]
    return _SPACES.sub(" ", trimmed).upper()


def _is_trailing_noise(char: str) -> bool:
    return (
        char.isspace() or char in _ASCII_PUNCTUATION or unicodedata.category(char).startswith("P")
    )


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
}
#: Twilio: "Attempt to send to unsubscribed recipient" (the carrier or Twilio holds a STOP).
TWILIO_UNSUBSCRIBED = 21610


def on_keyword(
    state: ConsentState, keyword: Keyword, context: ConsentContext, compliance: ComplianceConfig
) -> ConsentOutcome:
    """Apply a classified keyword. An opt-in keyword that changes nothing (a `YES` from a
    subscribed contact) is not consumed: it is an ordinary answer, and the rules see it."""
    outcome = _fire(state, _TRIGGERS[keyword.kind], keyword.word, context, compliance)
    consumed = outcome.refused is None or keyword.kind is not KeywordKind.OPT_IN
    return msgspec.structs.replace(outcome, consumed=consumed)


def on_send_error(
    state: ConsentState, error_code: int, context: ConsentContext, compliance: ComplianceConfig
) -> ConsentOutcome:
    """A send failed: Twilio 21610 means the contact is opted out at the carrier, so record it
    and cancel what is pending (no confirmation: it could not be delivered)."""
    if error_code != TWILIO_UNSUBSCRIBED:
        return ConsentOutcome(state=state, refused=f"error {error_code} is not a consent signal")
    return _fire(state, "carrier_opt_out", f"twilio error {error_code}", context, compliance)


def may_send(state: ConsentState, category: str, notice: Notice | None = None) -> bool:
    """The send gate, checked when a row is made and again before it leaves. After an opt-out
    nothing of any `category` goes, except the compliance notices themselves: the opt-out
    confirmation (made as the state changes), an opt-in confirmation, and a HELP answer (carrier
    rules require HELP to be answered whatever the opt-in status)."""
    return state is ConsentState.SUBSCRIBED or notice is not None


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

    def _notice(self, notice: Notice, text: str) -> None:
        ctx = self.context
        self.effects.append(
            SendNotice(notice=notice, channel=ctx.channel, to=ctx.address, text=text)
        )

"""Consent: the keyword classifier, the contact key, the consent machine and the send gate."""

from __future__ import annotations

import string
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.config import ComplianceConfig
from statemachines.consent import (
    KEYWORDS,
    ConsentContext,
    ConsentState,
    Decision,
    Gate,
    Keyword,
    KeywordKind,
    LedgerEntry,
    classify,
    contact_key,
    gate,
    on_decision,
    on_keyword,
    on_send_error,
)
from statemachines.effects import (
    AskPeople,
    CancelPending,
    HoldMarketing,
    Notice,
    ReleaseHeld,
    SendNotice,
)

NOW = datetime(2026, 11, 23, 22, 30, tzinfo=UTC)  # inside the default quiet hours, on purpose
CONFIG = ComplianceConfig(
    help_text="Acme: reply STOP to stop.", stop_confirmation="Stopped.", start_confirmation="Back!"
)
CTX = ConsentContext(event_id="e1", now=NOW, address="whatsapp:+15551230001", channel="whatsapp")
SUB, OUT, REV = ConsentState.SUBSCRIBED, ConsentState.OPTED_OUT, ConsentState.REVIEW
K = KeywordKind

CLASSIFIED = [
    ("STOP", None, K.OPT_OUT, "STOP"),
    ("stop", None, K.OPT_OUT, "STOP"),
    ("  Stop.  ", None, K.OPT_OUT, "STOP"),
    ("STOP!!!", None, K.OPT_OUT, "STOP"),
    ("stopall", None, K.OPT_OUT, "STOPALL"),
    ("Unsubscribe", None, K.OPT_OUT, "UNSUBSCRIBE"),
    ("cancel", None, K.OPT_OUT, "CANCEL"),
    ("end", None, K.OPT_OUT, "END"),
    ("quit?", None, K.OPT_OUT, "QUIT"),
    ("revoke", None, K.OPT_OUT, "REVOKE"),
    ("optout", None, K.OPT_OUT, "OPTOUT"),
    ("opt out", None, K.OPT_OUT, "OPT OUT"),
    ("Opt \t  Out!", None, K.OPT_OUT, "OPT OUT"),
    ("opt\nout", None, K.OPT_OUT, "OPT OUT"),
    ("start", None, K.OPT_IN, "START"),
    ("Unstop", None, K.OPT_IN, "UNSTOP"),
    ("yes!", None, K.OPT_IN, "YES"),
    ("help", None, K.HELP, "HELP"),
    ("Info?", None, K.HELP, "INFO"),
    # Twilio's own recognition wins, whatever the text (it may be a custom keyword).
    ("arrête", "STOP", K.OPT_OUT, "OptOutType=STOP"),
    ("go on", "START", K.OPT_IN, "OptOutType=START"),
    ("hilfe", "help", K.HELP, "OptOutType=HELP"),
]

NOT_KEYWORDS = [
    "yes please",
    "help me",
    "st op",
    "",
    "   ",
    "!!!",
]


@pytest.mark.parametrize(("text", "opt_out_type", "kind", "word"), CLASSIFIED)
def test_keywords_are_recognised(
    text: str, opt_out_type: str | None, kind: KeywordKind, word: str
) -> None:
    assert classify(text, opt_out_type) == Keyword(kind=kind, word=word)


@pytest.mark.parametrize("text", NOT_KEYWORDS)
def test_other_messages_are_not_keywords(text: str) -> None:
    assert classify(text) is None
    assert classify(text, opt_out_type="") is None


@settings(max_examples=300, deadline=None)
@given(
    text=st.sampled_from([*KEYWORDS, "stop it", "hello", "opt  out", "yes please", "Stop"])
    | st.text(max_size=12),
    before=st.text(alphabet=" \t\n\r\u00a0\u2003", max_size=4),
    after=st.text(alphabet=" \t\n\u00a0" + string.punctuation + "¡¿…。", max_size=5),
    upper=st.booleans(),
)
def test_whitespace_case_and_trailing_punctuation_never_change_the_verdict(
    text: str, before: str, after: str, upper: bool
) -> None:
    dressed = before + (text.upper() if upper else text.lower()) + after

    assert classify(dressed) == classify(text.upper() if upper else text.lower())


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("+15551230001", "+15551230001"),
        ("whatsapp:+15551230001", "+15551230001"),
        (" whatsapp:+1 555-123-0001 ", "+15551230001"),
        ("sms:+15551230001", "+15551230001"),
        ("Ana@Example.COM", "ana@example.com"),
        ("U024BE7LH", "U024BE7LH"),
        ("+1 not a number", "+1 not a number"),
    ],
)
def test_contact_key_joins_sms_and_whatsapp(address: str, key: str) -> None:
    assert contact_key(address) == key


def test_opt_out_confirms_at_once_cancels_pending_and_writes_the_ledger() -> None:
    outcome = on_keyword(SUB, Keyword(kind=K.OPT_OUT, word="OPT OUT"), CTX, CONFIG)

    assert outcome.state is OUT and outcome.consumed
    assert outcome.effects == (
        CancelPending(contact_key="+15551230001"),
        SendNotice(
            notice=Notice.OPT_OUT_CONFIRMATION,
            channel="whatsapp",
            to="whatsapp:+15551230001",
            text="Stopped.",
        ),
    )
    assert outcome.ledger == LedgerEntry(
        at=NOW,
        event_id="e1",
        contact_key="+15551230001",
        channel="whatsapp",
        change=OUT,
        reason="OPT OUT",
    )


# (state, keyword kind, state after, notices sent, cancels, ledger written, consumed)
MACHINE = [
    (SUB, K.OPT_OUT, OUT, [Notice.OPT_OUT_CONFIRMATION], True, True, True),
    (OUT, K.OPT_OUT, OUT, [], True, False, True),  # a repeated STOP: nothing new to say
    (OUT, K.OPT_IN, SUB, [Notice.OPT_IN_CONFIRMATION], False, True, True),
    (SUB, K.OPT_IN, SUB, [], False, False, False),  # a plain "yes": the rules see it
    (SUB, K.HELP, SUB, [Notice.HELP], False, False, True),
    (OUT, K.HELP, OUT, [Notice.HELP], False, False, True),
    (REV, K.HELP, REV, [Notice.HELP], False, False, True),
    # A possible opt-out goes on to the conversation (and to people), never consumed.
    (SUB, K.REVIEW, REV, [], False, True, False),
    (REV, K.REVIEW, REV, [], False, False, False),
    (OUT, K.REVIEW, OUT, [], False, False, False),  # already out: an ordinary message
    (REV, K.OPT_OUT, OUT, [Notice.OPT_OUT_CONFIRMATION], True, True, True),
    (REV, K.OPT_IN, SUB, [], False, True, True),  # START settles the review
]


@pytest.mark.parametrize(
    ("state", "kind", "after", "notices", "cancels", "ledger", "consumed"), MACHINE
)
def test_consent_machine(
    state: ConsentState,
    kind: KeywordKind,
    after: ConsentState,
    notices: list[Notice],
    cancels: bool,
    ledger: bool,
    consumed: bool,
) -> None:
    outcome = on_keyword(state, Keyword(kind=kind, word=kind.upper()), CTX, CONFIG)

    assert outcome.state is after
    assert [e.notice for e in outcome.effects if isinstance(e, SendNotice)] == notices
    assert any(isinstance(e, CancelPending) for e in outcome.effects) is cancels
    assert (outcome.ledger is not None) is ledger
    assert outcome.consumed is consumed
    for notice in notices:
        assert gate(after, "transactional", notice) is Gate.SEND


def test_help_answers_with_the_configured_text() -> None:
    outcome = on_keyword(SUB, Keyword(kind=K.HELP, word="HELP"), CTX, CONFIG)

    assert [e.text for e in outcome.effects if isinstance(e, SendNotice)] == [CONFIG.help_text]


@pytest.mark.parametrize(
    ("state", "code", "after", "ledger"),
    [(SUB, 21610, OUT, True), (OUT, 21610, OUT, False), (SUB, 30003, SUB, False)],
)
def test_twilio_21610_marks_the_contact_opted_out_without_a_confirmation(
    state: ConsentState, code: int, after: ConsentState, ledger: bool
) -> None:
    outcome = on_send_error(state, code, CTX, CONFIG)

    assert outcome.state is after
    assert (outcome.ledger is not None) is ledger
    assert not any(isinstance(e, SendNotice) for e in outcome.effects)
    if ledger:
        assert outcome.ledger is not None and outcome.ledger.reason == "twilio error 21610"


@pytest.mark.parametrize(
    ("state", "category", "notice", "allowed"),
    [
        (SUB, "marketing", None, True),
        (SUB, "transactional", None, True),
        (OUT, "marketing", None, False),
        (OUT, "transactional", None, False),
        (OUT, "conversational", None, False),
        (OUT, "transactional", Notice.OPT_OUT_CONFIRMATION, True),
        (OUT, "transactional", Notice.OPT_IN_CONFIRMATION, True),
        (OUT, "transactional", Notice.HELP, True),
    ],
)
def test_the_send_gate(
    state: ConsentState, category: str, notice: Notice | None, allowed: bool
) -> None:
    assert (gate(state, category, notice) is Gate.SEND) is allowed


def test_stop_then_start_leaves_two_ledger_entries() -> None:
    stop = on_keyword(SUB, Keyword(kind=K.OPT_OUT, word="STOP"), CTX, CONFIG)
    later = ConsentContext(event_id="e2", now=NOW, address="+15551230001", channel="sms")
    start = on_keyword(stop.state, Keyword(kind=K.OPT_IN, word="START"), later, CONFIG)

    entries = [stop.ledger, start.ledger]

    assert [(e.change, e.reason, e.channel) for e in entries if e] == [
        (OUT, "STOP", "whatsapp"),
        (SUB, "START", "sms"),
    ]
    assert {e.contact_key for e in entries if e} == {"+15551230001"}


def test_a_possible_opt_out_holds_marketing_asks_people_and_writes_the_ledger() -> None:
    outcome = on_keyword(SUB, Keyword(kind=K.REVIEW, word="CANCEL"), CTX, CONFIG)

    assert outcome.state is REV
    assert outcome.effects == (
        HoldMarketing(contact_key="+15551230001"),
        AskPeople(reason="possible opt-out: CANCEL"),
    )
    assert outcome.ledger is not None
    assert (outcome.ledger.change, outcome.ledger.reason) == (REV, "possible opt-out: CANCEL")


# (state, decision, state after, effects' kinds, ledger written)
DECISIONS = [
    (REV, Decision.OPT_OUT, OUT, ["cancel_pending", "send_notice"], True),
    (REV, Decision.KEEP_SUBSCRIBED, SUB, ["release_held"], True),
    # A second click, or a click after the customer settled it: refused, nothing happens.
    (SUB, Decision.OPT_OUT, SUB, [], False),
    (SUB, Decision.KEEP_SUBSCRIBED, SUB, [], False),
    (OUT, Decision.OPT_OUT, OUT, [], False),
    (OUT, Decision.KEEP_SUBSCRIBED, OUT, [], False),
]


@pytest.mark.parametrize(("state", "decision", "after", "effects", "ledger"), DECISIONS)
def test_a_person_decides_only_while_in_review(
    state: ConsentState, decision: Decision, after: ConsentState, effects: list[str], ledger: bool
) -> None:
    outcome = on_decision(state, decision, "U0AGENT", CTX, CONFIG)

    assert outcome.state is after
    assert [type(e).__struct_config__.tag for e in outcome.effects] == effects
    assert (outcome.refused is None) is ledger
    if ledger:
        assert outcome.ledger is not None
        assert outcome.ledger.reason == f"{decision.value.replace('_', ' ')}, decided by U0AGENT"


def test_keeping_the_contact_releases_what_was_held() -> None:
    outcome = on_decision(REV, Decision.KEEP_SUBSCRIBED, "U0AGENT", CTX, CONFIG)

    assert outcome.effects == (ReleaseHeld(contact_key="+15551230001"),)


@pytest.mark.parametrize(
    ("state", "category", "decided"),
    [
        (REV, "marketing", Gate.HOLD),
        (REV, "transactional", Gate.SEND),
        (REV, "conversational", Gate.SEND),
        (SUB, "marketing", Gate.SEND),
        (OUT, "marketing", Gate.CANCEL),
        (OUT, "transactional", Gate.CANCEL),
    ],
)
def test_in_review_the_gate_holds_marketing_only(
    state: ConsentState, category: str, decided: Gate
) -> None:
    assert gate(state, category) is decided

"""SmtpSender against FakeSMTP (aiosmtpd) with the real aiosmtplib: where a failure happens
decides what it means (notes/outbound-providers.md §3)."""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from channels.email_send import DEFAULT_SUBJECT, SmtpSender, outbox_message_id
from channels.outbound import FailureKind, NotCheckable, Outgoing, SendFailed
from tests.fakes.smtp import FakeSMTP, Phase

OUTBOX_ID = "01JDQ6Z8K3V4ZC5M2N7P9R0S1T:welcome:0"
FROM = "Switchboard <support@switchboard.test>"
#: RFC 5322 msg-id: `<` dot-atom-text `@` dot-atom-text `>`.
MSG_ID = re.compile(
    r"<[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*@switchboard>"
)


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeSMTP]:
    with FakeSMTP() as smtp:
        yield smtp


@pytest.fixture
def smtp(fake: FakeSMTP) -> Iterator[FakeSMTP]:
    yield fake
    fake.clear_faults()
    with fake.lock:
        fake.messages.clear()
        fake.refused.clear()
        fake.dropped.clear()


def _sender(smtp: FakeSMTP, *, from_: str | None = FROM, username: str | None = None) -> SmtpSender:
    return SmtpSender(
        host="127.0.0.1",
        port=smtp.port,
        from_=from_,
        username=username,
        password="secret" if username else None,
        timeout_seconds=5.0,
        local_hostname="switchboard.test",
    )


def _email(outbox_id: str = OUTBOX_ID, **payload: str) -> Outgoing:
    return Outgoing(
        id=outbox_id,
        channel="email",
        to="ana@example.test",
        category="transactional",
        kind="send",
        payload=payload or {"text": "Your order has shipped.", "subject": "Order 42"},
    )


async def _failure(sender: SmtpSender, message: Outgoing) -> SendFailed:
    with pytest.raises(SendFailed) as failed:
        await sender.send(message)
    return failed.value


async def test_accepted_with_a_message_id_from_the_outbox_id(smtp: FakeSMTP) -> None:
    sent = await _sender(smtp).send(_email())

    (mail,) = smtp.snapshot()
    assert mail.message_id == f"<{sent.provider_message_id}>" == outbox_message_id(OUTBOX_ID)
    assert (mail.mail_from, mail.rcpt_tos) == ("support@switchboard.test", ("ana@example.test",))
    assert (mail.subject, mail.body.strip()) == ("Order 42", "Your order has shipped.")
    assert b"From: Switchboard <support@switchboard.test>" in mail.raw


async def test_defaults_subject_and_takes_from_out_of_the_payload(smtp: FakeSMTP) -> None:
    sender = _sender(smtp, from_=None)
    await sender.send(_email(text="Olá, Ana — obrigado!", **{"from": "help@switchboard.test"}))

    (mail,) = smtp.snapshot()
    assert (mail.mail_from, mail.subject) == ("help@switchboard.test", DEFAULT_SUBJECT)
    assert mail.body.strip() == "Olá, Ana — obrigado!"
    assert mail.raw.isascii()  # 7-bit clean: no 8BITMIME needed


def test_message_ids_are_valid_and_one_to_one() -> None:
    ids = ["a:b", "a=3Ab", "a.b", "a b", "évt:1", "a_b-c"]
    made = [outbox_message_id(i) for i in ids]
    assert all(MSG_ID.fullmatch(m) for m in made), made
    assert len(set(made)) == len(ids)
    assert outbox_message_id("01J:r:0") == "<01J=3Ar=3A0@switchboard>"


@pytest.mark.parametrize(
    ("phase", "code", "kind"),
    [
        ("RCPT", 451, FailureKind.TRANSIENT),
        ("RCPT", 550, FailureKind.PERMANENT),
        ("MAIL", 452, FailureKind.TRANSIENT),
        ("MAIL", 553, FailureKind.PERMANENT),
        ("DATA", 451, FailureKind.TRANSIENT),
        ("DATA", 554, FailureKind.PERMANENT),
    ],
)
async def test_replies_classified_by_their_class(
    smtp: FakeSMTP, phase: Phase, code: int, kind: FailureKind
) -> None:
    smtp.fail_next(1, code, phase=phase)

    failure = await _failure(_sender(smtp), _email())

    assert (failure.kind, failure.code) == (kind, str(code))
    assert f"{code} at {phase}" in failure.reason
    assert smtp.snapshot() == []


async def test_a_refused_recipient_is_permanent(smtp: FakeSMTP) -> None:
    smtp.fail_for("ana@example.test", 550)

    failure = await _failure(_sender(smtp), _email())

    assert failure.kind is FailureKind.PERMANENT and "5.1.1" in failure.reason
    assert smtp.refused == [("RCPT", "ana@example.test", 550)]


async def test_a_drop_after_data_is_in_doubt_and_really_delivered(smtp: FakeSMTP) -> None:
    smtp.drop_next(1, phase="DATA")

    failure = await _failure(_sender(smtp), _email())

    assert failure.kind is FailureKind.IN_DOUBT
    assert len(smtp.by_message_id(outbox_message_id(OUTBOX_ID))) == 1  # the doubt is real
    assert smtp.dropped == ["DATA"]


async def test_a_drop_before_data_is_transient(smtp: FakeSMTP) -> None:
    smtp.drop_next(1, phase="RCPT")

    failure = await _failure(_sender(smtp), _email())

    assert failure.kind is FailureKind.TRANSIENT and "RCPT" in failure.reason
    assert smtp.snapshot() == []


async def test_a_resend_carries_the_same_message_id(smtp: FakeSMTP) -> None:
    sender = _sender(smtp)
    smtp.drop_next(1, phase="DATA")
    with pytest.raises(SendFailed):
        await sender.send(_email())
    await sender.send(_email())

    assert len(smtp.by_message_id(outbox_message_id(OUTBOX_ID))) == 2  # recognisable twins


async def test_connection_refused_is_transient() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: refused
        sender = SmtpSender(host="127.0.0.1", port=port, from_=FROM, local_hostname="x.test")
        failure = await _failure(sender, _email())

    assert failure.kind is FailureKind.TRANSIENT and "connect" in failure.reason


async def test_login_configured_but_not_offered_is_permanent(smtp: FakeSMTP) -> None:
    sender = _sender(smtp, username="bot")  # aiosmtpd offers no AUTH without TLS

    failure = await _failure(sender, _email())

    assert failure.kind is FailureKind.PERMANENT and "AUTH" in failure.reason


async def test_unbuildable_messages_fail_before_connecting(smtp: FakeSMTP) -> None:
    no_from = await _failure(_sender(smtp, from_=None), _email())
    bad_to = await _failure(
        _sender(smtp),
        Outgoing(id="x", channel="email", to="nobody", category="c", kind="k", payload={}),
    )

    assert no_from.kind is bad_to.kind is FailureKind.PERMANENT
    assert "channels.email.from" in no_from.reason
    assert smtp.snapshot() == [] and smtp.refused == []


async def test_find_cannot_check_and_destination_is_the_server(smtp: FakeSMTP) -> None:
    sender = _sender(smtp)

    with pytest.raises(NotCheckable):
        await sender.find(_email(), datetime.now(UTC))
    assert sender.destination(_email()) == f"127.0.0.1:{smtp.port}"
    assert sender.channels == ("email",)
    await sender.close()

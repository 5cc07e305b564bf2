"""HttpForwardSender against WebhookReceiver with the real httpx and standardwebhooks: signed,
`webhook-id` = the outbox id on every attempt, answers classified (notes §4)."""

from __future__ import annotations

import base64
import socket
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta

import pytest

from channels.outbound import FailureKind, NotCheckable, Outgoing, SendFailed
from channels.standard import HttpForwardSender, retry_after_seconds
from router.clock import FrozenClock
from tests.fakes import webhook_receiver
from tests.fakes.webhook_receiver import WebhookReceiver

SECRET = "whsec_" + base64.b64encode(b"forward-secret-for-the-crm-01").decode()
OUTBOX_ID = "01JDQ6Z8K3V4ZC5M2N7P9R0S1T:forward-crm:0"
EVENT = {"id": "01JDQ6Z8K3V4ZC5M2N7P9R0S1T", "type": "sms.received", "text": "Olá 👋"}


@pytest.fixture
def hook() -> Iterator[WebhookReceiver]:
    with WebhookReceiver(SECRET) as receiver:
        yield receiver


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(datetime.now(UTC).replace(microsecond=0))


@pytest.fixture
async def sender(hook: WebhookReceiver, clock: FrozenClock) -> AsyncIterator[HttpForwardSender]:
    forwards = {
        "crm": (hook.url + "/hooks/crm", SECRET),
        "other-key": (hook.url + "/hooks/other", "whsec_" + base64.b64encode(b"x" * 24).decode()),
    }
    sender = HttpForwardSender(forwards, timeout_seconds=2.0, clock=clock)
    yield sender
    await sender.close()


def _forward(to: str = "crm", outbox_id: str = OUTBOX_ID) -> Outgoing:
    return Outgoing(
        id=outbox_id,
        channel="http",
        to=to,
        category="transactional",
        kind="forward",
        payload={"event": EVENT},
    )


async def _failure(sender: HttpForwardSender, message: Outgoing) -> SendFailed:
    with pytest.raises(SendFailed) as failed:
        await sender.send(message)
    return failed.value


async def test_accepted_and_verified_with_the_same_secret(
    sender: HttpForwardSender, hook: WebhookReceiver
) -> None:
    sent = await sender.send(_forward())

    assert sent.provider_message_id == OUTBOX_ID
    (delivery,) = hook.snapshot()
    assert (delivery.webhook_id, delivery.path, delivery.payload) == (
        OUTBOX_ID,
        "/hooks/crm",
        EVENT,
    )
    assert hook.rejected == []


async def test_webhook_id_is_the_outbox_id_on_every_attempt(
    sender: HttpForwardSender, hook: WebhookReceiver, clock: FrozenClock
) -> None:
    hook.fail_next(1, webhook_receiver.accept_then_drop())  # taken, the answer lost
    first = await _failure(sender, _forward())
    clock.advance(timedelta(seconds=90))  # re-signed with the new time, still verified
    await sender.send(_forward())

    assert first.kind is FailureKind.TRANSIENT  # safe to resend: the receiver dedupes
    assert [webhook_id for webhook_id, _ in hook.attempts] == [OUTBOX_ID, OUTBOX_ID]
    assert hook.unique_count() == 1 and hook.duplicates == {OUTBOX_ID: 1}
    assert hook.rejected == []


async def test_a_5xx_is_transient(sender: HttpForwardSender, hook: WebhookReceiver) -> None:
    hook.fail_next(1, webhook_receiver.status(500))

    failure = await _failure(sender, _forward())

    assert (failure.kind, failure.code, failure.retry_after) == (
        FailureKind.TRANSIENT,
        "500",
        None,
    )
    assert "scripted failure" in failure.reason


async def test_429_is_transient_with_retry_after(
    sender: HttpForwardSender, hook: WebhookReceiver
) -> None:
    hook.fail_next(1, webhook_receiver.throttled(7))

    failure = await _failure(sender, _forward())

    assert (failure.kind, failure.code, failure.retry_after) == (FailureKind.TRANSIENT, "429", 7.0)


async def test_410_is_permanent(sender: HttpForwardSender, hook: WebhookReceiver) -> None:
    hook.fail_for("/hooks/crm", webhook_receiver.gone())

    failure = await _failure(sender, _forward())

    assert failure.kind is FailureKind.PERMANENT
    assert failure.reason.startswith("destination gone (410)")


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (302, FailureKind.PERMANENT),
        (400, FailureKind.PERMANENT),
        (408, FailureKind.TRANSIENT),
        (502, FailureKind.TRANSIENT),
        (503, FailureKind.TRANSIENT),
        (504, FailureKind.TRANSIENT),
    ],
)
async def test_other_statuses(
    sender: HttpForwardSender, hook: WebhookReceiver, status: int, kind: FailureKind
) -> None:
    hook.fail_next(1, webhook_receiver.status(status))

    failure = await _failure(sender, _forward())

    assert (failure.kind, failure.code) == (kind, str(status))
    if status == 302:
        assert "redirects are not followed" in failure.reason


async def test_a_wrong_secret_is_refused_permanently(
    sender: HttpForwardSender, hook: WebhookReceiver
) -> None:
    failure = await _failure(sender, _forward("other-key"))

    assert (failure.kind, failure.code) == (FailureKind.PERMANENT, "401")
    assert len(hook.rejected) == 1


async def test_an_unknown_forward_is_permanent(
    sender: HttpForwardSender, hook: WebhookReceiver
) -> None:
    failure = await _failure(sender, _forward("nowhere"))

    assert failure.kind is FailureKind.PERMANENT and "nowhere" in failure.reason
    assert hook.calls.total() == 0


async def test_a_read_timeout_is_transient(hook: WebhookReceiver, clock: FrozenClock) -> None:
    hook.fail_next(1, webhook_receiver.timeout(1.0))
    sender = HttpForwardSender({"crm": (hook.url, SECRET)}, timeout_seconds=0.2, clock=clock)
    try:
        failure = await _failure(sender, _forward())
    finally:
        await sender.close()

    assert failure.kind is FailureKind.TRANSIENT


async def test_connection_refused_is_transient(clock: FrozenClock) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/"  # bound, never listening
        sender = HttpForwardSender({"crm": (url, SECRET)}, clock=clock)
        try:
            failure = await _failure(sender, _forward())
        finally:
            await sender.close()

    assert failure.kind is FailureKind.TRANSIENT


async def test_find_cannot_check_and_destination_is_the_name(
    sender: HttpForwardSender,
) -> None:
    with pytest.raises(NotCheckable):
        await sender.find(_forward(), datetime.now(UTC))
    assert sender.destination(_forward()) == "crm"
    assert sender.channels == ("http",)


def test_a_bad_secret_is_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="'crm'"):
        HttpForwardSender({"crm": ("http://127.0.0.1/", "whsec_")})


def test_retry_after_in_seconds_or_as_a_date() -> None:
    now = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)
    assert retry_after_seconds("120", now) == 120.0
    assert retry_after_seconds("Mon, 23 Nov 2026 15:00:30 GMT", now) == 30.0
    assert retry_after_seconds("Mon, 23 Nov 2026 14:00:00 GMT", now) == 0.0
    assert retry_after_seconds("soon", now) is None
    assert retry_after_seconds(None, now) is None
    assert retry_after_seconds("nan", now) is None

"""TwilioSender through the official client against the loopback fake Messages API."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from channels.outbound import FailureKind, Outgoing, SendFailed, Sent
from channels.twilio_send import TwilioSender, parse_retry_after, sms_segments, twilio_failure
from tests.fakes import twilio_api
from tests.fakes.twilio_api import FakeTwilio

TO, FROM, OTHER_FROM = "+15559870001", "+15551230000", "+15551239999"
SERVICE = "MG" + "1" * 32
STATUS_URL = "https://switchboard.example/webhooks/twilio/status"


def _message(
    oid: str = "01OUTBOX0000000000000000A",
    *,
    channel: str = "sms",
    to: str = TO,
    text: str = "Your table is ready",
    **payload: Any,
) -> Outgoing:
    return Outgoing(
        id=oid,
        channel=channel,
        to=to,
        category="conversational",
        kind="reply",
        payload={"text": text, **payload},
    )


@pytest.fixture
def fake() -> Iterator[FakeTwilio]:
    with FakeTwilio() as running:
        yield running


def _sender(fake: FakeTwilio, **overrides: Any) -> TwilioSender:
    options: dict[str, Any] = {
        "account_sid": fake.account_sid,
        "auth_token": fake.auth_token,
        "from_": FROM,
        "api_base": fake.url,
        "status_callback_url": STATUS_URL,
        "timeout_seconds": 2.0,
        **overrides,
    }
    return TwilioSender(**options)


@pytest.fixture
async def sender(fake: FakeTwilio) -> AsyncIterator[TwilioSender]:
    made = _sender(fake)
    yield made
    await made.close()


async def _failure(sender: TwilioSender, message: Outgoing) -> SendFailed:
    with pytest.raises(SendFailed) as failed:
        await sender.send(message)
    return failed.value


# -- accepted ------------------------------------------------------------------------------


async def test_sms_is_created_once_with_the_outbox_id_in_its_status_callback(
    fake: FakeTwilio, sender: TwilioSender
) -> None:
    sent = await sender.send(_message("01OID0000000000000000000SM"))
    (accepted,) = fake.snapshot()
    assert sent == Sent(provider_message_id=accepted.sid, status="queued")
    assert (accepted.to, accepted.from_, accepted.body) == (TO, FROM, "Your table is ready")
    assert accepted.messaging_service_sid is None
    assert accepted.status_callback == f"{STATUS_URL}?oid=01OID0000000000000000000SM"
    assert sender.channels == ("sms", "whatsapp")
    assert sender.destination(_message()) == FROM


async def test_the_payload_sender_wins_over_the_configured_one(
    fake: FakeTwilio, sender: TwilioSender
) -> None:
    message = _message(**{"from": OTHER_FROM})
    await sender.send(message)
    assert fake.snapshot()[0].from_ == OTHER_FROM
    assert sender.destination(message) == OTHER_FROM


async def test_a_messaging_service_sends_when_no_number_is_configured(fake: FakeTwilio) -> None:
    sender = _sender(fake, from_=None, messaging_service_sid=SERVICE, status_callback_url=None)
    try:
        sent = await sender.send(_message())
        found = await sender.find(_message(), datetime.now(UTC) - timedelta(seconds=5))
    finally:
        await sender.close()
    (accepted,) = fake.snapshot()
    assert (accepted.from_, accepted.messaging_service_sid) == (None, SERVICE)
    assert accepted.status_callback is None  # no public URL configured: no receipts asked
    assert sent.status == "accepted"
    assert found is not None and found.provider_message_id == sent.provider_message_id
    assert sender.destination(_message()) == SERVICE


async def test_whatsapp_prefixes_to_and_from_once(fake: FakeTwilio, sender: TwilioSender) -> None:
    await sender.send(_message(channel="whatsapp"))
    await sender.send(
        _message(channel="whatsapp", to="whatsapp:" + TO, **{"from": "whatsapp:" + FROM})
    )
    first, second = fake.snapshot()
    assert (first.to, first.from_) == ("whatsapp:" + TO, "whatsapp:" + FROM)
    assert (second.to, second.from_) == ("whatsapp:" + TO, "whatsapp:" + FROM)
    assert first.status_callback == f"{STATUS_URL}?oid=01OUTBOX0000000000000000A"
    assert sender.destination(_message(channel="whatsapp")) == FROM  # the number, one key


async def test_a_status_url_with_a_query_keeps_it(fake: FakeTwilio) -> None:
    sender = _sender(fake, status_callback_url=STATUS_URL + "?tenant=a")
    try:
        await sender.send(_message("01X"))
    finally:
        await sender.close()
    assert fake.snapshot()[0].status_callback == f"{STATUS_URL}?tenant=a&oid=01X"


# -- refused -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (21211, "invalid 'To' number (Twilio 21211)"),
        (21614, "the 'To' number is not a mobile number (Twilio 21614)"),
        (21408, "not enabled on the Twilio account"),
        (21612, "cannot be reached from this 'From' number (Twilio 21612)"),
        (21606, "(Twilio 21606)"),
        (21999, "Error 21999 (Twilio 21999)"),  # unknown 4xx: Twilio's own message
    ],
)
async def test_rejections_are_permanent_with_a_reason_a_person_reads(
    fake: FakeTwilio, sender: TwilioSender, code: int, reason: str
) -> None:
    fake.fail_next(1, twilio_api.twilio_error(code))
    failure = await _failure(sender, _message())
    assert (failure.kind, failure.code, failure.retry_after) == (
        FailureKind.PERMANENT,
        str(code),
        None,
    )
    assert reason in failure.reason
    assert fake.accepted_count() == 0


async def test_validation_by_twilio_itself_is_permanent(
    fake: FakeTwilio, sender: TwilioSender
) -> None:
    too_long = await _failure(sender, _message(text="x" * 1601))
    assert (too_long.kind, too_long.code) == (FailureKind.PERMANENT, "21617")
    assert too_long.reason == "the text is longer than 1,600 characters (Twilio 21617)"

    wrong = _sender(fake, auth_token="not-the-token")
    try:
        auth = await _failure(wrong, _message())
    finally:
        await wrong.close()
    assert (auth.kind, auth.code) == (FailureKind.PERMANENT, "20003")
    assert "check channels.sms account_sid and auth_token" in auth.reason
    assert fake.accepted_count() == 0


async def test_no_sender_or_no_text_fails_without_calling_twilio(fake: FakeTwilio) -> None:
    sender = _sender(fake, from_=None)
    try:
        nobody = await _failure(sender, _message())
        empty = await _failure(sender, _message(text="", **{"from": FROM}))
    finally:
        await sender.close()
    assert (nobody.kind, nobody.code) == (FailureKind.PERMANENT, "21603")
    assert "set channels.sms from or messaging_service_sid" in nobody.reason
    assert (empty.kind, empty.code) == (FailureKind.PERMANENT, "21602")
    assert sum(fake.calls.values()) == 0


async def test_stop_marks_the_recipient_opted_out(fake: FakeTwilio, sender: TwilioSender) -> None:
    fake.fail_for(TO, twilio_api.twilio_error(21610))
    failure = await _failure(sender, _message())
    assert (failure.kind, failure.code) == (FailureKind.OPTED_OUT, "21610")
    assert failure.reason.endswith("(Twilio 21610)") and "STOP" in failure.reason


async def test_429_is_transient_with_retry_after(fake: FakeTwilio, sender: TwilioSender) -> None:
    fake.fail_next(1, twilio_api.rate_limited(7))
    failure = await _failure(sender, _message())
    assert (failure.kind, failure.code, failure.retry_after) == (
        FailureKind.TRANSIENT,
        "20429",
        7.0,
    )
    assert fake.accepted_count() == 0


async def test_retry_after_belongs_to_its_own_call_when_sends_overlap(fake: FakeTwilio) -> None:
    sender = _sender(fake)
    limited, fine = "+15550000429", "+15550000200"
    fake.fail_for(limited, twilio_api.rate_limited(7))
    fake.slow = 0.05  # both requests in flight on the one session at once
    try:
        outcomes = await asyncio.gather(
            sender.send(_message(to=limited)),
            sender.send(_message(to=fine)),
            return_exceptions=True,
        )
    finally:
        await sender.close()
    failure, sent = outcomes
    assert isinstance(failure, SendFailed) and failure.retry_after == 7.0
    assert isinstance(sent, Sent)
    assert [m.to for m in fake.snapshot()] == [fine]


@pytest.mark.parametrize("status", [500, 503])
async def test_5xx_is_in_doubt_and_find_then_knows(
    fake: FakeTwilio, sender: TwilioSender, status: int
) -> None:
    since = datetime.now(UTC)
    fake.fail_next(1, twilio_api.server_error(status))
    failure = await _failure(sender, _message())
    assert (failure.kind, failure.code) == (FailureKind.IN_DOUBT, str(20000 + status))
    assert f"HTTP {status}" in failure.reason
    assert await sender.find(_message(), since) is None  # the fake created nothing


# -- the wire --------------------------------------------------------------------------------


async def test_a_timeout_after_the_request_went_out_is_in_doubt(fake: FakeTwilio) -> None:
    sender = _sender(fake, timeout_seconds=0.3)
    since = datetime.now(UTC)
    fake.fail_next(1, twilio_api.timeout(3.0))
    try:
        failure = await _failure(sender, _message())
        found = await sender.find(_message(), since)
    finally:
        await sender.close()
    assert failure.kind is FailureKind.IN_DOUBT
    assert "no answer from Twilio in 0.3 s" in failure.reason
    assert found is None and fake.accepted_count() == 0


async def test_accepted_then_dropped_is_in_doubt_and_find_finds_it(
    fake: FakeTwilio, sender: TwilioSender
) -> None:
    since = datetime.now(UTC)
    fake.fail_next(1, twilio_api.accept_then_drop())
    failure = await _failure(sender, _message())
    assert failure.kind is FailureKind.IN_DOUBT
    (accepted,) = fake.snapshot()

    found = await sender.find(_message(), since)
    assert found == Sent(provider_message_id=accepted.sid, status="queued")
    assert fake.accepted_count() == 1  # looking did not send
    assert await sender.find(_message(text="another text"), since) is None
    assert await sender.find(_message(**{"from": OTHER_FROM}), since) is None
    assert await sender.find(_message(), datetime.now(UTC) + timedelta(minutes=5)) is None


async def test_find_takes_the_newest_match_and_whatsapp_addresses(
    fake: FakeTwilio, sender: TwilioSender
) -> None:
    since = datetime.now(UTC)
    assert await sender.find(_message(channel="whatsapp"), since) is None
    await sender.send(_message(channel="whatsapp"))
    latest = await sender.send(_message(channel="whatsapp"))
    found = await sender.find(_message(channel="whatsapp"), since)
    assert found is not None and found.provider_message_id == latest.provider_message_id
    assert await sender.find(_message(), since) is None  # the SMS address is another recipient


async def test_a_reset_after_the_request_is_in_doubt(
    fake: FakeTwilio, sender: TwilioSender
) -> None:
    fake.fail_next(1, twilio_api.reset())
    failure = await _failure(sender, _message())
    assert failure.kind is FailureKind.IN_DOUBT
    assert "after the request went out" in failure.reason


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_connection_refused_is_transient_and_so_is_a_failed_lookup(fake: FakeTwilio) -> None:
    sender = _sender(fake, api_base=f"http://127.0.0.1:{_closed_port()}")
    try:
        failure = await _failure(sender, _message())
        with pytest.raises(SendFailed) as lookup:
            await sender.find(_message(), datetime.now(UTC))
    finally:
        await sender.close()
    assert failure.kind is FailureKind.TRANSIENT
    assert "before the request went out" in failure.reason
    assert lookup.value.kind is FailureKind.TRANSIENT


async def test_a_lookup_that_fails_in_doubt_is_only_transient(
    fake: FakeTwilio, sender: TwilioSender
) -> None:
    fake.fail_next(1, twilio_api.server_error(503), op="list")
    with pytest.raises(SendFailed) as lookup:
        await sender.find(_message(), datetime.now(UTC))
    assert lookup.value.kind is FailureKind.TRANSIENT  # a read is safe to repeat
    assert lookup.value.reason.startswith("looking the message up failed: ")

    fake.fail_next(1, twilio_api.rate_limited(4), op="list")
    with pytest.raises(SendFailed) as limited:
        await sender.find(_message(), datetime.now(UTC))
    assert (limited.value.kind, limited.value.code, limited.value.retry_after) == (
        FailureKind.TRANSIENT,
        "20429",
        4.0,
    )


async def test_close_releases_the_session_and_a_new_send_opens_another(
    fake: FakeTwilio,
) -> None:
    sender = _sender(fake)
    await sender.close()  # nothing opened yet
    await sender.send(_message())
    await sender.close()
    await sender.send(_message())
    await sender.close()
    assert fake.accepted_count() == 2


# -- pieces ----------------------------------------------------------------------------------


def test_retry_after_reads_seconds_and_http_dates() -> None:
    now = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("1.5") == 1.5
    assert parse_retry_after("Mon, 23 Nov 2026 15:00:30 GMT", now) == 30.0
    assert parse_retry_after("Mon, 23 Nov 2026 14:00:00 GMT", now) == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after("nan") is None
    assert parse_retry_after(None) is None


def test_classification_without_a_code() -> None:
    class Bare(Exception):
        status, code, msg = 502, None, "Bad Gateway"

    failure = twilio_failure(Bare())
    assert (failure.kind, failure.code) == (FailureKind.IN_DOUBT, "502")
    assert failure.reason.endswith("(Twilio HTTP 502)")
    assert twilio_failure(type("Q", (Exception,), {"status": 400, "code": 21611})()).kind is (
        FailureKind.TRANSIENT
    )


# -- segments: what one send costs of a sender number's rate -----------------------------------


@pytest.mark.parametrize(
    ("text", "segments"),
    [
        pytest.param("a" * 160, 1, id="gsm7-160-in-one"),
        pytest.param("a" * 161, 2, id="gsm7-161-in-two-of-153"),
        pytest.param("a" * 306, 2, id="gsm7-306-fills-two"),
        pytest.param("a" * 307, 3, id="gsm7-307-needs-three"),
        pytest.param("€" * 80, 1, id="extension-chars-take-two-septets"),
        pytest.param("€" * 81, 2, id="extension-chars-overflow"),
        pytest.param("é" * 160, 1, id="accented-gsm7-letters"),
        pytest.param("ü" + "ç" * 69, 1, id="one-non-gsm-char-makes-it-ucs2-70"),
        pytest.param("ç" * 71, 2, id="ucs2-71-in-two-of-67"),
        pytest.param("😀" * 35, 1, id="emoji-take-two-utf16-units"),
        pytest.param("😀" * 36, 2, id="emoji-overflow"),
        pytest.param("", 1, id="empty"),
    ],
)
def test_sms_segments_count_as_carriers_split(text: str, segments: int) -> None:
    assert sms_segments(text) == segments


def test_units_are_segments_for_sms_and_one_for_whatsapp(fake: FakeTwilio) -> None:
    sender = _sender(fake)
    assert sender.units(_message(text="a" * 400)) == 3
    assert sender.units(_message(text="hello")) == 1
    assert sender.units(_message(channel="whatsapp", text="a" * 400)) == 1


def _busy_number(fake: FakeTwilio, count: int, text: str = "Another message") -> None:
    """`count` Messages to TO from FROM, made now at the fake (not sent by the sender)."""
    with fake.lock:
        for _ in range(count):
            fake._create({"To": [TO], "From": [FROM], "Body": [text]}, None)


async def test_a_look_that_cannot_reach_the_first_send_fails_instead_of_guessing(
    fake: FakeTwilio, sender: TwilioSender
) -> None:
    """More Messages to the number since the doubt window opened than one look reads: "not
    found" would be a guess, and a resend then a duplicate. The look fails (the row stays in
    doubt and is looked for again); one the list reaches past is answered as before."""
    from channels.twilio_send import FIND_LIMIT, FIND_SKEW

    since = datetime.now(UTC)
    await sender.send(_message())  # the send in doubt, oldest in the window
    _busy_number(fake, FIND_LIMIT)
    with pytest.raises(SendFailed) as lookup:
        await sender.find(_message(), since)
    assert lookup.value.kind is FailureKind.TRANSIENT
    assert "cannot reach its first send" in lookup.value.reason
    _busy_number(fake, 1, text="Your table is ready")  # the newest is a match: found
    found = await sender.find(_message(), since)
    assert found is not None and found.provider_message_id == fake.snapshot()[-1].sid
    # A list that reaches back past the window's start is complete: not there is not there.
    # Twilio lists by whole GMT days (DateSent>): the oldest listed stays on the day the look
    # asks from, whatever the time of day the test runs at (a window across midnight would
    # leave it out of the list, and the look rightly fail).
    day_start = since.replace(hour=0, minute=0, second=0, microsecond=0)
    window = max(since - timedelta(hours=1), day_start + timedelta(minutes=1))
    stamp = twilio_api._rfc2822(window - FIND_SKEW - timedelta(seconds=1))
    with fake.lock:
        oldest_listed = fake.messages[fake._order[-FIND_LIMIT]]
        oldest_listed["date_created"] = stamp
        oldest_listed["date_sent"] = oldest_listed["date_sent"] and stamp
    assert await sender.find(_message(text="never sent"), window) is None

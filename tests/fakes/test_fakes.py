"""The loopback fakes, each driven by the real client the dispatcher uses."""

from __future__ import annotations

import asyncio
import smtplib
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import Any

import aiohttp
import httpx
import pytest
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient
from standardwebhooks import Webhook
from twilio.base.exceptions import TwilioRestException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.request_validator import RequestValidator
from twilio.rest import Client

from tests.fakes import slack_api, twilio_api, webhook_receiver
from tests.fakes._http import LoopbackHTTPServer, Request, Response
from tests.fakes.slack_api import FakeSlack
from tests.fakes.smtp import FakeSMTP
from tests.fakes.twilio_api import FakeTwilio
from tests.fakes.webhook_receiver import WebhookReceiver

TO, FROM = "+15559870001", "+15551230000"
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


# -- Twilio ---------------------------------------------------------------------------------
@pytest.fixture
def fake_twilio() -> Iterator[FakeTwilio]:
    with FakeTwilio() as fake:
        yield fake


@pytest.fixture
async def twilio(fake_twilio: FakeTwilio) -> AsyncIterator[Client]:
    http = AsyncTwilioHttpClient()
    client = Client(fake_twilio.account_sid, fake_twilio.auth_token, http_client=http)
    client.api.base_url = fake_twilio.url  # the recipe: every Messages URL is built from it
    yield client
    await http.close()


async def test_twilio_create_fetch_and_list_like_twilio(
    fake_twilio: FakeTwilio, twilio: Client
) -> None:
    sent = [
        await twilio.messages.create_async(
            to=TO, from_=FROM, body=f"hello {i}", status_callback="https://sb.example/cb?oid=o1"
        )
        for i in range(3)
    ]
    assert all(m.sid.startswith("SM") and len(m.sid) == 34 for m in sent)
    assert {m.status for m in sent} == {"queued"}
    assert (sent[0].to, sent[0].from_, sent[0].body) == (TO, FROM, "hello 0")
    assert isinstance(sent[0].date_created, datetime)
    accepted = fake_twilio.snapshot()
    assert [m.sid for m in accepted] == [m.sid for m in sent]
    assert accepted[0].status_callback == "https://sb.example/cb?oid=o1"
    assert accepted[0].accepted_at <= accepted[1].accepted_at

    fetched = await twilio.messages(sent[1].sid).fetch_async()
    assert fetched.body == "hello 1"
    today = datetime.now(UTC)
    listed = await twilio.messages.list_async(
        to=TO, from_=FROM, date_sent_after=today, date_sent_before=today, page_size=2
    )
    assert [m.sid for m in listed] == [m.sid for m in reversed(sent)]  # newest first, 2 pages
    assert fake_twilio.calls["list"] == 2
    assert await twilio.messages.list_async(to="+15550000000") == []

    with pytest.raises(TwilioRestException) as missing:
        await twilio.messages("SM" + "0" * 32).fetch_async()
    assert (missing.value.status, missing.value.code) == (404, 20404)


async def test_twilio_rejections_raise_with_twilio_codes_and_create_nothing(
    fake_twilio: FakeTwilio, twilio: Client
) -> None:
    fake_twilio.fail_next(1, twilio_api.twilio_error(21610))
    with pytest.raises(TwilioRestException) as stop:
        await twilio.messages.create_async(to=TO, from_=FROM, body="hi")
    assert (stop.value.status, stop.value.code) == (400, 21610)
    assert "unsubscribed" in stop.value.msg

    fake_twilio.fail_for("+15550000009", twilio_api.twilio_error(21211))
    for _ in range(2):  # per recipient, every time
        with pytest.raises(TwilioRestException) as invalid:
            await twilio.messages.create_async(to="+15550000009", from_=FROM, body="hi")
        assert invalid.value.code == 21211
    with pytest.raises(TwilioRestException) as no_from:
        await twilio.messages.create_async(to=TO, body="hi")
    assert no_from.value.code == 21603

    bad = Client(fake_twilio.account_sid, "wrong", http_client=twilio.http_client)
    bad.api.base_url = fake_twilio.url
    with pytest.raises(TwilioRestException) as auth:
        await bad.messages.create_async(to=TO, from_=FROM, body="hi")
    assert (auth.value.status, auth.value.code) == (401, 20003)
    assert fake_twilio.accepted_count() == 0
    assert [a.label for a in fake_twilio.applied] == ["21610", "21211", "21211"]


async def test_twilio_transient_failures(fake_twilio: FakeTwilio, twilio: Client) -> None:
    http = twilio.http_client
    assert isinstance(http, AsyncTwilioHttpClient)
    fake_twilio.fail_next(1, twilio_api.rate_limited(7))
    with pytest.raises(TwilioRestException) as limited:
        await twilio.messages.create_async(to=TO, from_=FROM, body="hi")
    assert (limited.value.status, limited.value.code) == (429, 20429)
    last = http._test_only_last_response
    assert last is not None and last.headers["Retry-After"] == "7"

    fake_twilio.fail_next(1, twilio_api.server_error(503))
    with pytest.raises(TwilioRestException) as unavailable:
        await twilio.messages.create_async(to=TO, from_=FROM, body="hi")
    assert unavailable.value.status == 503

    fake_twilio.fail_next(1, twilio_api.reset())
    with pytest.raises(aiohttp.ClientConnectionError):
        await twilio.messages.create_async(to=TO, from_=FROM, body="hi")

    # AsyncTwilioHttpClient(timeout=...) is stored but not applied by request(): time out
    # around the call.
    fake_twilio.fail_next(1, twilio_api.timeout(5.0))
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2):
            await twilio.messages.create_async(to=TO, from_=FROM, body="hi")
    assert fake_twilio.accepted_count() == 0

    fake_twilio.fail_next(1, twilio_api.accept_then_drop())
    with pytest.raises(aiohttp.ClientConnectionError):
        await twilio.messages.create_async(to=TO, from_=FROM, body="in doubt")
    assert [m.body for m in fake_twilio.snapshot()] == ["in doubt"]  # created all the same
    assert fake_twilio.calls["create"] == 5


async def test_twilio_random_faults_are_seeded(fake_twilio: FakeTwilio, twilio: Client) -> None:
    fake_twilio.fail_randomly(0.3, twilio_api.TRANSIENT[:3], seed=7)
    outcomes = []
    for i in range(20):
        try:
            await twilio.messages.create_async(to=TO, from_=FROM, body=str(i))
            outcomes.append("ok")
        except TwilioRestException as exc:
            outcomes.append(str(exc.status))
    assert 0 < len(fake_twilio.applied) < 20
    assert outcomes.count("ok") == fake_twilio.accepted_count() == 20 - len(fake_twilio.applied)


async def test_twilio_slow_answer_leaves_the_message_in_doubt(
    fake_twilio: FakeTwilio, twilio: Client
) -> None:
    fake_twilio.slow = 0.5
    task = asyncio.create_task(twilio.messages.create_async(to=TO, from_=FROM, body="slow"))
    assert await fake_twilio.wait_until_async(lambda: len(fake_twilio.accepted) == 1, 2)
    assert not task.done()  # accepted, answer not yet sent: a crash here is the in-doubt case
    assert (await task).sid == fake_twilio.snapshot()[0].sid


async def test_twilio_status_failure_and_signed_callbacks(
    fake_twilio: FakeTwilio, twilio: Client
) -> None:
    got: list[tuple[str, dict[str, list[str]], str]] = []

    async def record(request: Request) -> Response:
        got.append((request.target, request.form(), request.headers["x-twilio-signature"]))
        return Response(200, b"<Response/>", (("Content-Type", "text/xml"),))

    receiver = LoopbackHTTPServer(record)
    receiver.start()
    try:
        fake_twilio.auto_callbacks = True
        fake_twilio.callback_target = f"http://127.0.0.1:{receiver.port}"
        public = "https://switchboard.example/webhooks/twilio/status?oid=01OUTBOX"
        fake_twilio.fail_next(1, twilio_api.status_failure(63016))
        created = await twilio.messages.create_async(
            to="whatsapp:" + TO, from_="whatsapp:" + FROM, body="hi", status_callback=public
        )
        assert created.status == "queued"
        assert await fake_twilio.wait_until_async(lambda: len(fake_twilio.callbacks) == 1, 2)
        fetched = await twilio.messages(created.sid).fetch_async()
        assert (fetched.status, fetched.error_code) == ("failed", 63016)
        target, form, signature = got[0]
        assert target == "/webhooks/twilio/status?oid=01OUTBOX"
        params = {k: v[0] for k, v in form.items()}
        assert (params["MessageStatus"], params["ErrorCode"]) == ("failed", "63016")
        assert RequestValidator(fake_twilio.auth_token).validate(public, params, signature)

        fake_twilio.auto_callbacks = False
        done = fake_twilio.advance(created.sid, "delivered")  # late and out of order
        assert await asyncio.wrap_future(done) == 200
        assert [c.status for c in fake_twilio.callbacks] == ["failed", "delivered"]
    finally:
        receiver.stop()


def test_twilio_fake_serves_the_sync_client_too(fake_twilio: FakeTwilio) -> None:
    client = Client(fake_twilio.account_sid, fake_twilio.auth_token)
    client.api.base_url = fake_twilio.url
    message = client.messages.create(to=TO, messaging_service_sid="MG" + "1" * 32, body="x")
    assert message.status == "accepted"  # a Messaging Service without From
    assert fake_twilio.wait_until(lambda: fake_twilio.accepted_count() == 1, 1)


# -- Slack ----------------------------------------------------------------------------------
@pytest.fixture
def fake_slack() -> Iterator[FakeSlack]:
    with FakeSlack() as fake:
        yield fake


@pytest.fixture
def slack(fake_slack: FakeSlack) -> AsyncWebClient:
    return AsyncWebClient(token=fake_slack.token, base_url=fake_slack.base_url, retry_handlers=[])


async def test_slack_posts_threads_updates_and_reads_back_metadata(
    fake_slack: FakeSlack, slack: AsyncWebClient
) -> None:
    assert (await slack.auth_test())["user_id"] == fake_slack.bot_user_id
    meta = {"event_type": "switchboard_outbound", "event_payload": {"outbox_id": "01A"}}
    parent = await slack.chat_postMessage(channel="C1", text="escalated", metadata=meta)
    reply = await slack.chat_postMessage(
        channel="C1",
        text="reply",
        thread_ts=parent["ts"],
        metadata={"event_type": "switchboard_outbound", "event_payload": {"outbox_id": "01B"}},
    )
    assert parent["ok"] and parent["channel"] == "C1"
    assert float(reply["ts"]) > float(parent["ts"])
    assert parent["message"]["metadata"]["event_payload"] == {"outbox_id": "01A"}

    history = await slack.conversations_history(channel="C1", include_all_metadata=True)
    assert [m["ts"] for m in history["messages"]] == [parent["ts"]]  # thread parents only
    assert history["messages"][0]["metadata"] == meta
    bare = await slack.conversations_history(channel="C1")
    assert "metadata" not in bare["messages"][0]
    replies = await slack.conversations_replies(
        channel="C1", ts=parent["ts"], include_all_metadata=True
    )
    assert [m["metadata"]["event_payload"]["outbox_id"] for m in replies["messages"]] == [
        "01A",
        "01B",
    ]
    updated = await slack.chat_update(channel="C1", ts=parent["ts"], text="claimed by ana")
    assert updated["message"]["text"] == "claimed by ana"
    assert len(fake_slack.posts_in("C1")) == 2 and len(fake_slack.updates) == 1

    for _ in range(3):
        await slack.chat_postMessage(channel="C2", text="page")
    first = await slack.conversations_history(channel="C2", limit=2)
    assert first["has_more"]
    rest = await slack.conversations_history(
        channel="C2", limit=2, cursor=first["response_metadata"]["next_cursor"]
    )
    assert len(first["messages"]) + len(rest["messages"]) == 3 and not rest["has_more"]


async def test_slack_errors_as_slack_sends_them(
    fake_slack: FakeSlack, slack: AsyncWebClient
) -> None:
    fake_slack.fail_next(1, slack_api.ratelimited(7))
    with pytest.raises(SlackApiError) as limited:
        await slack.chat_postMessage(channel="C1", text="hi")
    assert limited.value.response.status_code == 429
    assert limited.value.response.headers["Retry-After"] == "7"
    assert limited.value.response["error"] == "ratelimited"

    fake_slack.fail_for("C404", slack_api.slack_error("channel_not_found"))
    fake_slack.fail_next(1, slack_api.slack_error("not_in_channel"))
    fake_slack.fail_next(1, slack_api.server_error(500))
    errors = []
    for channel in ("C404", "C1", "C1"):
        with pytest.raises(SlackApiError) as failed:
            await slack.chat_postMessage(channel=channel, text="hi")
        errors.append((failed.value.response.status_code, failed.value.response.get("error")))
    assert errors == [(200, "channel_not_found"), (200, "not_in_channel"), (500, None)]

    fake_slack.fail_next(1, slack_api.reset())
    with pytest.raises(aiohttp.ClientConnectionError):
        await slack.chat_postMessage(channel="C1", text="hi")
    wrong = AsyncWebClient(token="xoxb-wrong", base_url=fake_slack.base_url, retry_handlers=[])
    with pytest.raises(SlackApiError) as auth:
        await wrong.chat_postMessage(channel="C1", text="hi")
    assert auth.value.response["error"] == "invalid_auth"
    assert fake_slack.posts == []

    with FakeSlack(channels=["C1"]) as strict:
        client = AsyncWebClient(token=strict.token, base_url=strict.base_url, retry_handlers=[])
        with pytest.raises(SlackApiError) as unknown:
            await client.chat_postMessage(channel="C9", text="hi")
        assert unknown.value.response["error"] == "channel_not_found"


async def test_slack_default_retry_handler_double_posts_after_a_lost_answer(
    fake_slack: FakeSlack,
) -> None:
    default = AsyncWebClient(token=fake_slack.token, base_url=fake_slack.base_url)
    fake_slack.fail_next(1, slack_api.accept_then_drop())
    await default.chat_postMessage(channel="C1", text="once?")
    assert [p.text for p in fake_slack.posts_in("C1")] == ["once?", "once?"]  # notes §2


# -- SMTP -----------------------------------------------------------------------------------
def _mail(message_id: str = "<01OUTBOX@switchboard.test>") -> EmailMessage:
    mail = EmailMessage()
    mail["From"], mail["To"], mail["Subject"] = "sb@example.test", "ana@example.test", "Hi"
    mail["Message-ID"] = message_id
    mail.set_content("Hello Ana")
    return mail


@pytest.fixture
def fake_smtp() -> Iterator[FakeSMTP]:
    with FakeSMTP() as fake:
        yield fake


async def test_smtp_with_aiosmtplib(fake_smtp: FakeSMTP) -> None:
    aiosmtplib = pytest.importorskip("aiosmtplib")
    await aiosmtplib.send(_mail(), hostname="127.0.0.1", port=fake_smtp.port)
    (got,) = fake_smtp.snapshot()
    assert (got.mail_from, got.rcpt_tos) == ("sb@example.test", ("ana@example.test",))
    assert (got.message_id, got.subject, got.body.strip()) == (
        "<01OUTBOX@switchboard.test>",
        "Hi",
        "Hello Ana",
    )

    fake_smtp.fail_next(1, 550, phase="RCPT")
    with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as refused:
        await aiosmtplib.send(_mail(), hostname="127.0.0.1", port=fake_smtp.port)
    assert refused.value.recipients[0].code == 550
    fake_smtp.fail_next(1, 451, phase="DATA")
    with pytest.raises(aiosmtplib.SMTPDataError) as later:
        await aiosmtplib.send(_mail(), hostname="127.0.0.1", port=fake_smtp.port)
    assert later.value.code == 451

    fake_smtp.drop_next(1, phase="DATA")
    with pytest.raises(aiosmtplib.SMTPServerDisconnected):
        await aiosmtplib.send(_mail("<02@x>"), hostname="127.0.0.1", port=fake_smtp.port)
    assert len(fake_smtp.by_message_id("<02@x>")) == 1  # delivered although it looked failed
    assert [r[:3] for r in fake_smtp.refused] == [
        ("RCPT", "ana@example.test", 550),
        ("DATA", "sb@example.test", 451),
    ]


def test_smtp_with_the_standard_library(fake_smtp: FakeSMTP) -> None:
    with smtplib.SMTP("127.0.0.1", fake_smtp.port, timeout=5) as client:
        client.send_message(_mail())
    fake_smtp.fail_for("bob@example.test", 550)
    with smtplib.SMTP("127.0.0.1", fake_smtp.port, timeout=5) as client:
        mail = _mail("<03@x>")
        mail.replace_header("To", "ana@example.test, bob@example.test")
        assert client.send_message(mail) == {
            "bob@example.test": (550, b"5.1.1 Requested action not taken: mailbox unavailable")
        }
    fake_smtp.drop_next(1, phase="RCPT")
    with (
        pytest.raises(smtplib.SMTPServerDisconnected),
        smtplib.SMTP("127.0.0.1", fake_smtp.port, timeout=5) as client,
    ):
        client.send_message(_mail("<04@x>"))
    assert [m.message_id for m in fake_smtp.snapshot()] == [
        "<01OUTBOX@switchboard.test>",
        "<03@x>",
    ]
    assert fake_smtp.snapshot()[1].rcpt_tos == ("ana@example.test",)


# -- Standard Webhooks receiver -------------------------------------------------------------
def _signed(body: str, webhook_id: str, secret: str = SECRET) -> dict[str, str]:
    now = datetime.now(UTC)
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(secret).sign(webhook_id, now, body),
        "content-type": "application/json",
    }


def test_webhook_receiver_verifies_dedupes_and_fails_on_script() -> None:
    with WebhookReceiver(SECRET) as hook, httpx.Client(base_url=hook.url) as http:
        body = '{"type":"message.sent","id":"01A"}'
        assert http.post("/in", content=body, headers=_signed(body, "01A")).status_code == 204
        assert http.post("/in", content=body, headers=_signed(body, "01A")).status_code == 204
        tampered = _signed(body, "01B")
        answer = http.post("/in", content=body.replace("sent", "lost"), headers=tampered)
        assert answer.status_code == 401
        other = _signed(body, "01C", secret="whsec_" + "QUJD" * 8)
        assert http.post("/in", content=body, headers=other).status_code == 401

        hook.fail_for("/gone", webhook_receiver.gone())
        hook.fail_next(1, webhook_receiver.throttled(30))
        hook.fail_next(1, webhook_receiver.status(500))
        assert http.post("/gone", content=body, headers=_signed(body, "01D")).status_code == 410
        slow_down = http.post("/in", content=body, headers=_signed(body, "01D"))
        assert (slow_down.status_code, slow_down.headers["retry-after"]) == (429, "30")
        assert http.post("/in", content=body, headers=_signed(body, "01D")).status_code == 500

        (delivery,) = hook.snapshot()
        assert (delivery.webhook_id, delivery.payload["id"]) == ("01A", "01A")
        assert hook.duplicates == {"01A": 1}
        assert len(hook.rejected) == 2 and hook.calls["deliver"] == 7


def test_fault_script_orders_key_then_next_then_random() -> None:
    waited: list[Any] = []
    with WebhookReceiver(SECRET) as hook, httpx.Client(base_url=hook.url) as http:
        hook.fail_randomly(1.0, [webhook_receiver.status(503)])
        hook.fail_next(1, webhook_receiver.status(502))
        hook.fail_for("/k", webhook_receiver.status(504), times=1)
        codes = [http.post(path, content=b"{}").status_code for path in ("/k", "/k", "/k")]
        assert codes == [504, 502, 503]
        hook.clear_faults()
        start = time.monotonic()
        hook.slow = 0.05
        body = "{}"
        assert http.post("/k", content=body, headers=_signed(body, "1")).status_code == 204
        waited.append(time.monotonic() - start)
    assert waited[0] >= 0.05

"""SlackSender through slack_sdk's AsyncWebClient against the loopback fake Web API."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from channels.outbound import FailureKind, Outgoing, SendFailed, Sent
from channels.slack_send import SlackSender
from tests.fakes import slack_api
from tests.fakes._http import Response, respond
from tests.fakes.slack_api import FakeSlack

CHANNEL = "C0ESCALATE"
META = "switchboard_outbound"
BLOCKS = [{"type": "section", "text": {"type": "mrkdwn", "text": "*Ana* needs a person"}}]


def _message(
    oid: str = "01OUTBOX0000000000000000A",
    *,
    kind: str = "escalation",
    to: str = CHANNEL,
    **payload: Any,
) -> Outgoing:
    return Outgoing(
        id=oid,
        channel="slack",
        to=to,
        category="transactional",
        kind=kind,
        payload={"text": "Ana needs a person", **payload},
    )


@pytest.fixture
def fake() -> Iterator[FakeSlack]:
    with FakeSlack() as running:
        yield running


def _sender(fake: FakeSlack, **overrides: Any) -> SlackSender:
    options: dict[str, Any] = {
        "bot_token": fake.token,
        "api_base": fake.base_url,
        "timeout_seconds": 2.0,
        **overrides,
    }
    return SlackSender(**options)


@pytest.fixture
async def sender(fake: FakeSlack) -> AsyncIterator[SlackSender]:
    made = _sender(fake)
    yield made
    await made.close()


async def _failure(sender: SlackSender, message: Outgoing) -> SendFailed:
    with pytest.raises(SendFailed) as failed:
        await sender.send(message)
    return failed.value


# -- posted --------------------------------------------------------------------------------


async def test_a_post_with_blocks_carries_the_outbox_id_as_metadata(
    fake: FakeSlack, sender: SlackSender
) -> None:
    sent = await sender.send(_message("01POST", blocks=BLOCKS))
    (post,) = fake.posts_in(CHANNEL)
    assert sent == Sent(provider_message_id=post.ts, status="sent")
    assert (post.text, post.blocks, post.thread_ts) == ("Ana needs a person", BLOCKS, None)
    assert post.metadata == {"event_type": META, "event_payload": {"outbox_id": "01POST"}}
    assert sender.channels == ("slack",)
    assert sender.destination(_message()) == CHANNEL


async def test_the_request_turns_unfurling_off_and_leaves_link_names_alone(
    fake: FakeSlack, sender: SlackSender
) -> None:
    seen: list[dict[str, Any]] = []
    handle = fake.handle

    def spy(request: Any, op: str, fault: Any) -> Any:
        if op == "chat.postMessage":
            seen.append(request.json())
        return handle(request, op, fault)

    fake.handle = spy  # type: ignore[method-assign]
    await sender.send(_message())
    (body,) = seen
    assert (body["unfurl_links"], body["unfurl_media"]) == (False, False)
    assert "link_names" not in body and "blocks" not in body and "thread_ts" not in body


async def test_a_thread_reply_goes_into_the_thread(fake: FakeSlack, sender: SlackSender) -> None:
    parent = await sender.send(_message("01PARENT"))
    reply = await sender.send(
        _message("01REPLY", kind="relay_to_thread", thread_ts=parent.provider_message_id)
    )
    first, second = fake.posts_in(CHANNEL)
    assert second.thread_ts == parent.provider_message_id == first.ts
    assert reply.provider_message_id == second.ts
    assert second.metadata == {"event_type": META, "event_payload": {"outbox_id": "01REPLY"}}


async def test_an_escalation_update_edits_the_post(fake: FakeSlack, sender: SlackSender) -> None:
    parent = await sender.send(_message("01PARENT", blocks=BLOCKS))
    claimed = [{"type": "section", "text": {"type": "mrkdwn", "text": "Claimed by *Bo*"}}]
    update = _message(
        "01UPDATE",
        kind="escalation_update",
        ts=parent.provider_message_id,
        text="Claimed by Bo",
        blocks=claimed,
    )
    sent = await sender.send(update)
    assert sent.provider_message_id == parent.provider_message_id
    assert len(fake.posts) == 1  # edited, not posted
    (edited,) = fake.updates
    assert (edited["ts"], edited["text"], edited["blocks"]) == (
        parent.provider_message_id,
        "Claimed by Bo",
        claimed,
    )
    assert await sender.find(update, datetime.now(UTC)) is None  # repeating it is harmless

    gone = await _failure(sender, _message(kind="escalation_update", ts="1.000001"))
    assert (gone.kind, gone.code) == (FailureKind.PERMANENT, "message_not_found")
    no_ts = await _failure(sender, _message(kind="escalation_update"))
    assert no_ts.kind is FailureKind.PERMANENT and "without the ts" in no_ts.reason


# -- refused -------------------------------------------------------------------------------


async def test_ratelimited_is_transient_with_retry_after(
    fake: FakeSlack, sender: SlackSender
) -> None:
    fake.fail_next(1, slack_api.ratelimited(7))
    failure = await _failure(sender, _message())
    assert (failure.kind, failure.code, failure.retry_after) == (
        FailureKind.TRANSIENT,
        "ratelimited",
        7.0,
    )
    assert fake.posts == []


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        ("channel_not_found", f"Slack channel {CHANNEL} not found, or the bot cannot see it"),
        ("not_in_channel", f"the Switchboard bot is not in Slack channel {CHANNEL}: invite it"),
        ("is_archived", f"Slack channel {CHANNEL} is archived"),
        ("msg_too_long", "the message is too long for Slack"),
        ("token_revoked", "the Slack bot token was revoked: reinstall the app"),
        ("invalid_blocks", "Slack refused the message's blocks"),
        ("some_new_error", "Slack refused the message"),
    ],
)
async def test_refusals_are_permanent_with_a_reason_a_person_reads(
    fake: FakeSlack, sender: SlackSender, error: str, reason: str
) -> None:
    fake.fail_for(CHANNEL, slack_api.slack_error(error))
    failure = await _failure(sender, _message())
    assert (failure.kind, failure.code, failure.retry_after) == (
        FailureKind.PERMANENT,
        error,
        None,
    )
    assert failure.reason == f"{reason} (Slack {error})"


async def test_an_unknown_channel_and_a_wrong_token_as_slack_answers_them(
    fake: FakeSlack,
) -> None:
    with FakeSlack(channels=["C1"]) as strict:
        sender = _sender(strict, api_base=strict.url)  # a bare host gets /api/
        try:
            failure = await _failure(sender, _message(to="C404"))
            assert (failure.kind, failure.code) == (FailureKind.PERMANENT, "channel_not_found")
            assert "C404" in failure.reason
            assert isinstance(await sender.send(_message(to="C1")), Sent)
        finally:
            await sender.close()
    wrong = _sender(fake, bot_token="xoxb-wrong")
    try:
        auth = await _failure(wrong, _message())
    finally:
        await wrong.close()
    assert (auth.kind, auth.code) == (FailureKind.PERMANENT, "invalid_auth")
    assert "check channels.slack.bot_token" in auth.reason


async def test_missing_scope_names_the_scope(fake: FakeSlack, sender: SlackSender) -> None:
    answer = Response.json(200, {"ok": False, "error": "missing_scope", "needed": "chat:write"})
    fake.fail_next(1, respond(answer))
    failure = await _failure(sender, _message())
    assert (
        failure.reason == "the Slack app lacks a scope it needs (chat:write) (Slack missing_scope)"
    )


@pytest.mark.parametrize(
    ("fault", "code"),
    [
        (slack_api.slack_error("internal_error"), "internal_error"),
        (slack_api.slack_error("fatal_error"), "fatal_error"),
        (slack_api.server_error(500), "500"),
        (slack_api.server_error(503), "503"),
    ],
)
async def test_server_failures_are_in_doubt_for_a_post_and_transient_for_an_update(
    fake: FakeSlack, sender: SlackSender, fault: Any, code: str
) -> None:
    fake.fail_next(1, fault)
    failure = await _failure(sender, _message())
    assert (failure.kind, failure.code) == (FailureKind.IN_DOUBT, code)
    assert "may have been posted" in failure.reason

    parent = await sender.send(_message("01PARENT"))
    fake.fail_next(1, fault, op="chat.update")
    update = _message(kind="escalation_update", ts=parent.provider_message_id)
    failure = await _failure(sender, update)
    assert (failure.kind, failure.code) == (FailureKind.TRANSIENT, code)


# -- the wire --------------------------------------------------------------------------------


async def test_accepted_then_dropped_is_in_doubt_and_find_reads_the_metadata(
    fake: FakeSlack, sender: SlackSender
) -> None:
    since = datetime.now(UTC)
    await sender.send(_message("01BEFORE"))
    fake.fail_next(1, slack_api.accept_then_drop())
    failure = await _failure(sender, _message("01DOUBT"))
    assert failure.kind is FailureKind.IN_DOUBT
    assert len(fake.posts_in(CHANNEL)) == 2  # posted once, not retried by the SDK
    await sender.send(_message("01AFTER"))

    found = await sender.find(_message("01DOUBT"), since)
    assert found == Sent(provider_message_id=fake.posts_in(CHANNEL)[1].ts)
    assert await sender.find(_message("01NEVER"), since) is None
    assert await sender.find(_message("01DOUBT"), datetime.now(UTC) + timedelta(minutes=1)) is None
    assert len(fake.posts) == 3  # looking did not post


async def test_find_looks_inside_the_thread_for_a_reply(
    fake: FakeSlack, sender: SlackSender
) -> None:
    since = datetime.now(UTC)
    parent = await sender.send(_message("01PARENT"))
    thread = parent.provider_message_id
    reply = _message("01REPLY", kind="relay_to_thread", thread_ts=thread)
    assert await sender.find(reply, since) is None
    fake.fail_next(1, slack_api.accept_then_drop())
    assert (await _failure(sender, reply)).kind is FailureKind.IN_DOUBT

    found = await sender.find(reply, since)
    assert found is not None and found.provider_message_id == fake.posts[-1].ts
    assert await sender.find(_message("01REPLY"), since) is None  # not a thread parent
    missing_thread = _message("01X", kind="relay_to_thread", thread_ts="1.000001")
    assert await sender.find(missing_thread, since) is None


async def test_find_pages_through_a_busy_channel(fake: FakeSlack, sender: SlackSender) -> None:
    since = datetime.now(UTC)
    await sender.send(_message("01FIRST"))
    for i in range(230):
        await sender.send(_message(f"01BUSY{i:03d}"))
    found = await sender.find(_message("01FIRST"), since)
    assert found is not None and found.provider_message_id == fake.posts[0].ts
    assert fake.calls["conversations.history"] == 2


async def test_a_failed_lookup_is_never_in_doubt(fake: FakeSlack, sender: SlackSender) -> None:
    fake.fail_next(1, slack_api.ratelimited(3), op="conversations.history")
    with pytest.raises(SendFailed) as limited:
        await sender.find(_message(), datetime.now(UTC))
    assert (limited.value.kind, limited.value.retry_after) == (FailureKind.TRANSIENT, 3.0)
    assert limited.value.reason.startswith("looking the message up failed: ")

    fake.fail_next(1, slack_api.server_error(500), op="conversations.history")
    with pytest.raises(SendFailed) as broken:
        await sender.find(_message(), datetime.now(UTC))
    assert broken.value.kind is FailureKind.TRANSIENT


async def test_a_timeout_after_the_post_went_out_is_in_doubt(fake: FakeSlack) -> None:
    sender = _sender(fake, timeout_seconds=0.3)
    fake.fail_next(1, slack_api.timeout(3.0))
    try:
        failure = await _failure(sender, _message())
    finally:
        await sender.close()
    assert failure.kind is FailureKind.IN_DOUBT
    assert fake.posts == []


async def test_a_reset_is_in_doubt(fake: FakeSlack, sender: SlackSender) -> None:
    fake.fail_next(1, slack_api.reset())
    failure = await _failure(sender, _message())
    assert failure.kind is FailureKind.IN_DOUBT
    assert fake.calls["chat.postMessage"] == 1  # no hidden retry


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_connection_refused_is_transient(fake: FakeSlack) -> None:
    sender = _sender(fake, api_base=f"http://127.0.0.1:{_closed_port()}/api/")
    try:
        failure = await _failure(sender, _message())
    finally:
        await sender.close()
    assert failure.kind is FailureKind.TRANSIENT
    assert failure.reason.startswith("could not connect to Slack: ")


async def test_close_and_send_again(fake: FakeSlack) -> None:
    sender = _sender(fake)
    await sender.close()
    await sender.send(_message("01A"))
    await sender.close()
    await sender.send(_message("01B"))
    await sender.close()
    assert [p.metadata["event_payload"]["outbox_id"] for p in fake.posts if p.metadata] == [
        "01A",
        "01B",
    ]


async def test_a_look_that_cannot_reach_the_first_post_fails_instead_of_guessing(
    fake: FakeSlack, sender: SlackSender
) -> None:
    """More posts in the channel since the doubt window opened than a look reads (FIND_PAGES
    pages): the look fails and the row stays in doubt, instead of "not there" and a repost."""
    from channels.slack_send import FIND_PAGES

    since = datetime.now(UTC)
    await sender.send(_message("01DOUBT"))
    with fake.lock:
        for _ in range(FIND_PAGES * 200):
            fake._post(CHANNEL, {"text": "busy channel"})
    with pytest.raises(SendFailed) as lookup:
        await sender.find(_message("01DOUBT"), since)
    assert lookup.value.kind is FailureKind.TRANSIENT
    assert "cannot reach its first post" in lookup.value.reason

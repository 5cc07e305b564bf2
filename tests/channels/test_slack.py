"""Slack adapter edge cases: requests signed by slack_sdk, verified and parsed by our adapter.

Outcomes a provider sees (status, body) and stored rows are checked through the live server;
pure normalisation details through the adapter's own verify/parse with a frozen clock.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import sqlite3
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from slack_sdk.signature import SignatureVerifier

from channels.base import InboundRequest, PayloadError, SignatureError
from channels.slack import SlackEventsAdapter, SlackInteractionsAdapter
from router.clock import FrozenClock
from router.events import Event
from tests.cases.base import SignedRequest
from tests.cases.slack import (
    AGENT,
    CHANNEL,
    EVENTS_PATH,
    INTERACTIONS_PATH,
    TS,
    USER,
    block_actions,
    callback,
    form_body,
    signed,
    user_message,
)
from tests.support import SECRETS, LiveServer

FORM = "application/x-www-form-urlencoded"
THREAD_TS = "1699999000.000050"


def quarantined(tmp_path: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(tmp_path / "var" / "switchboard.db") as db:
        return db.execute("SELECT source, reason FROM quarantine").fetchall()


def inbound(request: SignedRequest, clock: FrozenClock) -> InboundRequest:
    return InboundRequest(
        body=request.body,
        headers={name.lower(): value for name, value in request.headers.items()},
        url="https://switchboard.example.com" + request.path,
        content_type=request.headers["Content-Type"],
        received_at=clock.now(),
        correlation_id="test",
    )


def events_adapter(clock: FrozenClock, tolerance: int = 300) -> SlackEventsAdapter:
    return SlackEventsAdapter(SECRETS["slack"], tolerance, clock)


def parse_event(clock: FrozenClock, event: dict[str, Any], event_id: str = "Ev1") -> Event:
    """Sign an event_callback at the clock's time, verify and parse it; its one event."""
    adapter = events_adapter(clock)
    request = signed(
        EVENTS_PATH,
        callback(event_id, event),
        "application/json",
        SECRETS["slack"][0],
        int(clock.now().timestamp()),
    )
    adapter.verify(inbound(request, clock))
    parsed = adapter.parse(inbound(request, clock))
    assert len(parsed.events) == 1
    return parsed.events[0]


# --- through the live server ----------------------------------------------------------------


def test_url_verification_is_answered_with_the_challenge_and_nothing_is_stored(
    server: LiveServer,
) -> None:
    body = json.dumps(
        {"token": "t", "challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY", "type": "url_verification"}
    ).encode()
    request = signed(EVENTS_PATH, body, "application/json", SECRETS["slack"][0], int(time.time()))
    response = server.post(request)
    assert response.status_code == 200, response.text
    assert response.json() == {"challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY"}
    assert server.events() == []


def test_unsigned_url_verification_is_refused(server: LiveServer) -> None:
    body = b'{"challenge": "abc", "type": "url_verification"}'
    response = httpx.post(
        server.base_url + EVENTS_PATH,
        content=body,
        headers={"Content-Type": "application/json"},
        timeout=10,
    )
    assert response.status_code == 401


@pytest.mark.parametrize(
    ("path", "content_type", "body"),
    [
        (EVENTS_PATH, "application/json", b'{"type": "event_callback", "event_id": '),
        (EVENTS_PATH, "application/json", b'{"type": "event_callback", "event_id": "Ev1"}'),
        (INTERACTIONS_PATH, FORM, b"payload=%7Bnot-json"),
        (INTERACTIONS_PATH, FORM, b"nothing=here"),
    ],
    ids=["truncated-json", "no-event", "payload-not-json", "no-payload-field"],
)
def test_malformed_after_valid_signature_is_400_and_quarantined(
    server: LiveServer, tmp_path: Path, path: str, content_type: str, body: bytes
) -> None:
    request = signed(path, body, content_type, SECRETS["slack"][0], int(time.time()))
    response = server.post(request)
    assert response.status_code == 400, response.text
    assert "malformed payload" in response.json()["error"]
    assert server.events() == []
    assert [source for source, _ in quarantined(tmp_path)] == ["slack"]


def test_thread_reply_is_stored_as_agent_reply(server: LiveServer) -> None:
    event = user_message("r", user=AGENT, ts=TS, thread_ts=THREAD_TS, text="On it")
    request = signed(
        EVENTS_PATH,
        callback("EvReply", event),
        "application/json",
        SECRETS["slack"][0],
        int(time.time()),
    )
    response = server.post(request)
    assert response.status_code == 200, response.text
    assert response.content == b""
    [row] = server.events()
    assert row["type"] == "agent.reply"
    assert row["conversation_key"] == f"slack:{CHANNEL}:{THREAD_TS}"
    assert row["contact"] == {"address": AGENT}
    assert row["text"] == "On it"


# --- verification with the injected clock ---------------------------------------------------


def test_tolerance_comes_from_config_and_the_injected_clock(clock: FrozenClock) -> None:
    adapter = events_adapter(clock, tolerance=60)
    at = int(clock.now().timestamp())
    body = callback("Ev1", user_message("x"))
    fresh = signed(EVENTS_PATH, body, "application/json", SECRETS["slack"][1], at - 60)
    stale = signed(EVENTS_PATH, body, "application/json", SECRETS["slack"][0], at - 61)
    adapter.verify(inbound(fresh, clock))
    with pytest.raises(SignatureError, match="stale"):
        adapter.verify(inbound(stale, clock))
    clock.advance(timedelta(seconds=1))
    with pytest.raises(SignatureError, match="stale"):
        adapter.verify(inbound(fresh, clock))


@pytest.mark.parametrize("timestamp", ["", "abc", "-5", "1e9", "9" * 40])
def test_unreadable_timestamp_is_refused(clock: FrozenClock, timestamp: str) -> None:
    request = signed(EVENTS_PATH, b"{}", "application/json", SECRETS["slack"][0], 0)
    request = request.with_headers(X_Slack_Request_Timestamp=timestamp)
    with pytest.raises(SignatureError):
        events_adapter(clock).verify(inbound(request, clock))


@settings(max_examples=200, deadline=None)
@given(
    body=st.text(max_size=200).map(str.encode),
    secret=st.sampled_from([*SECRETS["slack"], "slack-secret-wrong"]),
    tampered=st.booleans(),
)
def test_verification_agrees_with_slack_sdk(body: bytes, secret: str, tampered: bool) -> None:
    """Our raw-bytes v0 check and slack_sdk's verifier accept and refuse the same requests
    (slack_sdk cannot read a body that is not UTF-8: those only we check, below). The SDK
    reads the real clock, so ours is frozen at the real time."""
    clock = FrozenClock(datetime.now(UTC))
    at = str(int(clock.now().timestamp()))
    request = signed(EVENTS_PATH, body, "application/json", secret, int(at))
    if tampered:
        request = SignedRequest(EVENTS_PATH, body + b" ", request.headers)
    signature = request.headers["X-Slack-Signature"]
    sdk_accepts = any(
        SignatureVerifier(s).is_valid(body=request.body, timestamp=at, signature=signature)
        for s in SECRETS["slack"]
    )
    try:
        events_adapter(clock).verify(inbound(request, clock))
        ours = True
    except SignatureError:
        ours = False
    assert ours == sdk_accepts


def test_authentic_body_that_is_not_utf8_is_quarantined(server: LiveServer, tmp_path: Path) -> None:
    """A correct HMAC over bytes that are not UTF-8 is authentic but malformed: 400, kept."""
    body = b'{"type": "event_callback", "event_id": "Ev1", "x": "\xff"}'
    secret = SECRETS["slack"][0].encode()
    at = str(int(time.time()))
    digest = hmac.new(secret, b"v0:" + at.encode() + b":" + body, hashlib.sha256).hexdigest()
    request = SignedRequest(
        EVENTS_PATH,
        body,
        {
            "Content-Type": "application/json",
            "X-Slack-Request-Timestamp": at,
            "X-Slack-Signature": "v0=" + digest,
        },
    )
    response = server.post(request)
    assert response.status_code == 400, response.text
    [(source, reason)] = quarantined(tmp_path)
    assert source == "slack" and reason in response.json()["error"]


def test_body_that_is_not_utf8_is_refused_not_crashed(clock: FrozenClock) -> None:
    at = int(clock.now().timestamp())
    request = signed(EVENTS_PATH, b"{}", "application/json", SECRETS["slack"][0], at)
    with pytest.raises(SignatureError):
        events_adapter(clock).verify(
            inbound(SignedRequest(EVENTS_PATH, b"\xff{}", request.headers), clock)
        )


# --- Events API normalisation ---------------------------------------------------------------


def test_top_level_message_is_message_received_with_slack_fields(clock: FrozenClock) -> None:
    event = parse_event(clock, user_message("m"))
    assert (event.type, event.provider_type, event.dedupe_key) == (
        "message.received",
        "message",
        f"slack:{CHANNEL}:{TS}",
    )
    assert event.channel == "slack"
    assert event.data == {
        "event_type": "message",
        "subtype": None,
        "channel": CHANNEL,
        "channel_type": "channel",
        "ts": TS,
        "thread_ts": None,
        "team": "T0TEAM",
        "api_app_id": "A0APP",
        "user": USER,
        "bot_id": None,
    }
    assert event.occurred_at is not None and event.occurred_at.timestamp() == float(TS)


def test_a_message_is_keyed_by_channel_and_ts_other_events_by_event_id(
    clock: FrozenClock,
) -> None:
    """The same message delivered twice under two event ids (or read back by reconciliation,
    which has none) is one event; an app_mention of that message stays its own event."""
    first = parse_event(clock, user_message("m"), "Ev1")
    again = parse_event(clock, user_message("m"), "Ev2")
    mention = parse_event(clock, user_message("m", type="app_mention"), "Ev3")
    assert first.dedupe_key == again.dedupe_key == f"slack:{CHANNEL}:{TS}"
    assert mention.dedupe_key == "slack:Ev3"
    envelope = json.loads(callback("Ev4", user_message("m")))
    del envelope["event_id"]
    unkeyed = SignedRequest(EVENTS_PATH, b"", {"Content-Type": "application/json"})
    adapter = events_adapter(clock)
    body = json.dumps(envelope).encode()
    parsed = adapter.parse(inbound(replace(unkeyed, body=body), clock))
    assert parsed.events[0].dedupe_key == f"slack:{CHANNEL}:{TS}"
    del envelope["event"]["ts"]
    body = json.dumps(envelope).encode()
    with pytest.raises(PayloadError, match="event_id"):
        adapter.parse(inbound(replace(unkeyed, body=body), clock))


def test_thread_root_is_not_a_reply(clock: FrozenClock) -> None:
    event = parse_event(clock, user_message("m", thread_ts=TS))
    assert event.type == "message.received"


@pytest.mark.parametrize(
    "fields",
    [
        {"bot_id": "B0SWITCH", "user": "U0BOTUSER", "thread_ts": THREAD_TS},
        {"subtype": "bot_message", "bot_id": "B0LEGACY", "user": None, "username": "ci"},
    ],
    ids=["bot-token-post-in-thread", "legacy-bot-message"],
)
def test_bot_messages_keep_their_provider_type(clock: FrozenClock, fields: dict[str, Any]) -> None:
    event = parse_event(clock, user_message("b", **fields))
    assert event.type == event.provider_type == "message.bot_message"
    assert event.data["bot_id"] == fields["bot_id"]


def test_app_mention_is_message_received(clock: FrozenClock) -> None:
    event = parse_event(clock, user_message("m", type="app_mention", text="<@U0BOT> help"))
    assert (event.type, event.provider_type) == ("message.received", "app_mention")


def test_file_share_keeps_subtype_and_lists_files(clock: FrozenClock) -> None:
    file = {"id": "F1", "name": "a.png", "mimetype": "image/png", "size": 3, "url_private": "u"}
    event = parse_event(clock, user_message("f", subtype="file_share", files=[file]))
    assert (event.type, event.provider_type) == ("message.received", "message.file_share")
    assert [(a.url, a.filename, a.content_type, a.size) for a in event.attachments] == [
        ("u", "a.png", "image/png", 3)
    ]


def test_edits_and_other_events_keep_the_provider_type(clock: FrozenClock) -> None:
    edit = user_message("e", subtype="message_changed", user=None, message={"text": "x"})
    assert parse_event(clock, edit).type == "message.message_changed"
    reaction = {
        "type": "reaction_added",
        "user": USER,
        "reaction": "eyes",
        "item": {"type": "message", "channel": CHANNEL, "ts": TS},
        "event_ts": TS,
    }
    event = parse_event(clock, reaction)
    assert event.type == "reaction_added"
    assert event.conversation_key == f"slack:{CHANNEL}:{TS}"


def test_user_given_as_an_object_is_understood(clock: FrozenClock) -> None:
    event = parse_event(clock, {"type": "user_change", "user": {"id": USER, "name": "ann"}})
    assert event.type == "user_change"
    assert event.contact is not None and event.contact.address == USER


@pytest.mark.parametrize(
    "event",
    [user_message("x", user=None), user_message("x", channel=None), {"text": "no type"}],
    ids=["no-user", "no-channel", "no-type"],
)
def test_person_message_without_required_fields_is_a_payload_error(
    clock: FrozenClock, event: dict[str, Any]
) -> None:
    with pytest.raises(PayloadError):
        parse_event(clock, event)


# --- interactions ---------------------------------------------------------------------------


def parse_interaction(clock: FrozenClock, payload: dict[str, Any]) -> list[Event]:
    adapter = SlackInteractionsAdapter(SECRETS["slack"], 300, clock)
    at = int(clock.now().timestamp())
    request = signed(INTERACTIONS_PATH, form_body(payload), FORM, SECRETS["slack"][0], at)
    adapter.verify(inbound(request, clock))
    return adapter.parse(inbound(request, clock)).events


def test_block_actions_is_agent_action_with_the_button_fields(clock: FrozenClock) -> None:
    payload = block_actions("1337.42.abc")
    payload["container"]["thread_ts"] = THREAD_TS
    [event] = parse_interaction(clock, payload)
    assert (event.type, event.dedupe_key) == ("agent.action", "slack:1337.42.abc")
    assert event.conversation_key == f"slack:{CHANNEL}:{THREAD_TS}"
    assert event.data == {
        "action_id": "claim",
        "block_id": "escalation",
        "value": "claim:sms:+15551230001",
        "user": AGENT,
        "team": "T0TEAM",
        "channel": CHANNEL,
        "message_ts": TS,
        "thread_ts": THREAD_TS,
        "response_url": "https://hooks.slack.com/actions/T0TEAM/1/abc",
        "trigger_id": "1337.42.abc",
    }


def test_interaction_without_trigger_id_dedupes_on_the_body(clock: FrozenClock) -> None:
    payload = block_actions("unused")
    del payload["trigger_id"]
    [event] = parse_interaction(clock, payload)
    assert event.dedupe_key.startswith("slack:") and len(event.dedupe_key) == 6 + 64


def test_two_actions_in_one_payload_are_two_events(clock: FrozenClock) -> None:
    payload = block_actions("t1")
    payload["actions"].append({"action_id": "resolve", "value": "close"})
    events = parse_interaction(clock, payload)
    assert [(e.dedupe_key, e.data["action_id"]) for e in events] == [
        ("slack:t1", "claim"),
        ("slack:t1:1", "resolve"),
    ]


def test_other_interaction_types_keep_their_type(clock: FrozenClock) -> None:
    payload = {"type": "view_submission", "trigger_id": "t2", "user": {"id": AGENT}}
    [event] = parse_interaction(clock, payload)
    assert (event.type, event.provider_type, event.dedupe_key) == (
        "view_submission",
        "view_submission",
        "slack:t2",
    )


def test_block_actions_without_actions_is_a_payload_error(clock: FrozenClock) -> None:
    payload = block_actions("t3")
    payload["actions"] = []
    with pytest.raises(PayloadError):
        parse_interaction(clock, payload)

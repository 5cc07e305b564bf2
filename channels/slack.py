"""Slack, inbound: the Events API (/webhooks/slack/events) and interactivity (.../interactions).

Verification is Slack's documented v0 scheme: `v0=` + hex HMAC-SHA256 of `v0:timestamp:body`
under each active secret, compared in constant time, with the timestamp within
`tolerance_seconds` of our injected clock. It is computed over the raw bytes: slack_sdk's
`SignatureVerifier` decodes the body as UTF-8 first, so an authentic body that is not UTF-8
would be refused as unsigned instead of quarantined as malformed. tests/channels/test_slack.py
checks that both accept and refuse the same requests.

Normalisation of Events API callbacks (`dedupe_key`: `slack:` + channel + `:` + ts for a
`message` event, so its Events API delivery and the same message read back by reconciliation
(channels/slack_history.py) are one event; `slack:` + event_id for every other event):

- `provider_type` is the event type, plus `.` + subtype when there is one
  (`message`, `message.file_share`, `app_mention`, `reaction_added`). A message written by a
  bot, whether Slack marks it with subtype `bot_message` or only with `bot_id` (apps posting
  with a bot token, including Switchboard's own escalation posts), is `message.bot_message`.
- A person's message inside a thread (thread_ts != ts) is `agent.reply`: agents answer
  customers from the escalation thread. A person's other messages and `app_mention` are
  `message.received`. Everything else (bot messages, edits, deletions, joins, reactions, ...)
  keeps the provider type as its type, so no rule mistakes it for a person's message and
  Switchboard's own posts never loop back as replies.
- `url_verification` is answered with its challenge and stores nothing; `app_rate_limited`
  is acknowledged and stores nothing.

Interactions (`payload=` JSON form field): `block_actions` gives one `agent.action` event per
action; other payload types keep their own type. The dedupe key is `slack:` + trigger_id
(`:` + index for a second action in one payload), else `slack:` + sha256 of the body.
Slack gets `200` with an empty body once the events are committed.

The sending side is `channels/slack_send.py`.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar

import msgspec

from channels.base import (
    Ack,
    InboundRequest,
    Parsed,
    PayloadError,
    SignatureError,
    first,
    sha256_hex,
)
from router.clock import Clock
from router.events import Attachment, Channel, Contact, Event, EventType
from router.ids import new_ulid
from router.keys import slack_thread

SIGNATURE_HEADER = "x-slack-signature"
TIMESTAMP_HEADER = "x-slack-request-timestamp"
EMPTY_ACK = Ack(media_type="text/plain", body=b"")
#: Message subtypes that are still a person writing (a file, a `/me`, a thread broadcast).
_PERSON_SUBTYPES = frozenset({None, "file_share", "me_message", "thread_broadcast"})


def slack_signature(secret: bytes, timestamp: str, body: bytes) -> bytes:
    """`v0=<hex>`: Slack's v0 signature of `body` sent at `timestamp`."""
    signed = b"v0:" + timestamp.encode("ascii") + b":" + body
    return b"v0=" + hmac.new(secret, signed, hashlib.sha256).hexdigest().encode("ascii")


# --- Events API payloads --------------------------------------------------------------------


class SlackFile(msgspec.Struct, kw_only=True):
    id: str | None = None
    name: str | None = None
    mimetype: str | None = None
    size: int | None = None
    url_private: str | None = None


class SlackItem(msgspec.Struct, kw_only=True):
    """What a reaction points at."""

    channel: str | None = None
    ts: str | None = None


class SlackInnerEvent(msgspec.Struct, kw_only=True):
    """The `event` of an event_callback; `user` and `channel` are objects in a few types."""

    type: str
    subtype: str | None = None
    user: str | dict[str, Any] | None = None
    bot_id: str | None = None
    channel: str | dict[str, Any] | None = None
    channel_type: str | None = None
    text: str | None = None
    ts: str | None = None
    thread_ts: str | None = None
    event_ts: str | None = None
    item: SlackItem | None = None
    files: list[SlackFile] = []


class SlackEnvelope(msgspec.Struct, kw_only=True):
    """The outer body Slack posts to the Events URL."""

    type: str
    challenge: str | None = None
    event_id: str | None = None
    event_time: int | None = None
    team_id: str | None = None
    api_app_id: str | None = None
    event: SlackInnerEvent | None = None


# --- Interaction payloads -------------------------------------------------------------------


class SlackRef(msgspec.Struct, kw_only=True):
    """`{id, ...}` objects: user, team, channel."""

    id: str
    name: str | None = None
    username: str | None = None


class SlackContainer(msgspec.Struct, kw_only=True):
    type: str | None = None
    message_ts: str | None = None
    thread_ts: str | None = None
    channel_id: str | None = None


class SlackMessageRef(msgspec.Struct, kw_only=True):
    ts: str | None = None
    thread_ts: str | None = None


class SlackAction(msgspec.Struct, kw_only=True):
    action_id: str
    block_id: str | None = None
    type: str | None = None
    value: str | None = None
    action_ts: str | None = None


class SlackInteraction(msgspec.Struct, kw_only=True):
    type: str
    trigger_id: str | None = None
    user: SlackRef | None = None
    team: SlackRef | None = None
    channel: SlackRef | None = None
    container: SlackContainer | None = None
    message: SlackMessageRef | None = None
    response_url: str | None = None
    actions: list[SlackAction] = []


_envelope_decoder = msgspec.json.Decoder(SlackEnvelope)
_interaction_decoder = msgspec.json.Decoder(SlackInteraction)


class SlackEventsAdapter:
    """POST /webhooks/slack/events: the Events API."""

    source = "slack"
    content_types: ClassVar[frozenset[str]] = frozenset({"application/json"})

    def __init__(
        self, signing_secrets: Sequence[str], tolerance_seconds: int, clock: Clock
    ) -> None:
        self._secrets = [secret.encode("utf-8") for secret in signing_secrets]
        self._tolerance = tolerance_seconds
        self._clock = clock

    def verify(self, request: InboundRequest) -> None:
        signature = request.headers.get(SIGNATURE_HEADER)
        timestamp = request.headers.get(TIMESTAMP_HEADER)
        if not signature or not timestamp:
            raise SignatureError("missing X-Slack-Signature or X-Slack-Request-Timestamp")
        if not (timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= 12):
            raise SignatureError("X-Slack-Request-Timestamp is not unix seconds")
        if abs(self._clock.now().timestamp() - int(timestamp)) > self._tolerance:
            raise SignatureError("stale X-Slack-Request-Timestamp")
        if not self._any_valid(request.body, timestamp, signature):
            raise SignatureError("X-Slack-Signature does not match")

    def _any_valid(self, body: bytes, timestamp: str, signature: str) -> bool:
        """Every secret is tried (no early exit), each compared in constant time."""
        given = signature.encode("utf-8", "replace")
        found = False
        for secret in self._secrets:
            found |= hmac.compare_digest(slack_signature(secret, timestamp, body), given)
        return found

    def parse(self, request: InboundRequest) -> Parsed:
        envelope = _decode(_envelope_decoder, request.body)
        if envelope.type == "url_verification":
            if not envelope.challenge:
                raise PayloadError("url_verification without a challenge")
            body = msgspec.json.encode({"challenge": envelope.challenge})
            return Parsed(events=[], ack=Ack(body=body))
        if envelope.type == "app_rate_limited":
            return Parsed(events=[], ack=EMPTY_ACK)
        if envelope.type != "event_callback":
            raise PayloadError(f"unsupported Events API payload type {envelope.type!r}")
        return Parsed(events=[_callback_event(request, envelope)], ack=EMPTY_ACK)


class SlackInteractionsAdapter(SlackEventsAdapter):
    """POST /webhooks/slack/interactions: buttons (claim, resolve, return to bot) and friends."""

    content_types: ClassVar[frozenset[str]] = frozenset({"application/x-www-form-urlencoded"})

    def parse(self, request: InboundRequest) -> Parsed:
        payload = first(request.form(), "payload")
        if payload is None:
            raise PayloadError("missing payload field")
        interaction = _decode(_interaction_decoder, payload.encode("utf-8"))
        base_key = f"slack:{interaction.trigger_id or sha256_hex(request.body)}"
        if interaction.type != "block_actions":
            event = _interaction_event(request, interaction, base_key)
            return Parsed(events=[event], ack=EMPTY_ACK)
        if not interaction.actions or interaction.user is None:
            raise PayloadError("block_actions without actions or user")
        events = [
            _action_event(request, interaction, action, f"{base_key}:{i}" if i else base_key)
            for i, action in enumerate(interaction.actions)
        ]
        return Parsed(events=events, ack=EMPTY_ACK)


def _decode(decoder: msgspec.json.Decoder[Any], raw: bytes) -> Any:
    try:
        return decoder.decode(raw)
    except msgspec.DecodeError as exc:  # ValidationError is a subclass
        raise PayloadError(f"Slack payload: {exc}") from exc


def _callback_event(request: InboundRequest, envelope: SlackEnvelope) -> Event:
    inner = envelope.event
    if inner is None:
        raise PayloadError("event_callback without event")
    user, channel = _ref_id(inner.user), _ref_id(inner.channel)
    dedupe_key = _dedupe_key(envelope, inner, channel)
    if inner.item is not None:
        channel = channel or inner.item.channel
    provider_type = _provider_type(inner)
    event_type = _normalised_type(inner, provider_type)
    if event_type != provider_type and (user is None or inner.ts is None or channel is None):
        raise PayloadError(f"{provider_type} event without user, channel or ts")
    root_ts = inner.thread_ts or inner.ts or (inner.item.ts if inner.item else None)
    return Event(
        id=new_ulid(request.received_at),
        source="slack",
        type=event_type,
        provider_type=provider_type,
        dedupe_key=dedupe_key,
        channel=Channel.SLACK,
        contact=Contact(address=user) if user else None,
        conversation_key=slack_thread(channel, root_ts) if channel and root_ts else None,
        text=inner.text,
        attachments=tuple(_attachment(f) for f in inner.files),
        data=_event_data(envelope, inner, user, channel),
        received_at=request.received_at,
        occurred_at=_from_ts(inner.ts or inner.event_ts) or _from_unix(envelope.event_time),
        correlation_id=request.correlation_id,
    )


def _dedupe_key(envelope: SlackEnvelope, inner: SlackInnerEvent, channel: str | None) -> str:
    """`slack:CHANNEL:TS` for a message (one key however it reached us), else the event_id."""
    if inner.type == "message" and channel and inner.ts:
        return slack_thread(channel, inner.ts)
    if not envelope.event_id:
        raise PayloadError("event_callback without event_id")
    return f"slack:{envelope.event_id}"


def _provider_type(inner: SlackInnerEvent) -> str:
    if inner.type == "message" and (inner.subtype == "bot_message" or inner.bot_id):
        return "message.bot_message"
    return f"{inner.type}.{inner.subtype}" if inner.subtype else inner.type


def _normalised_type(inner: SlackInnerEvent, provider_type: str) -> str:
    """agent.reply / message.received for a person's message; the provider type otherwise."""
    if inner.type == "app_mention" and not inner.bot_id:
        return EventType.MESSAGE_RECEIVED
    if inner.type != "message" or inner.bot_id or inner.subtype not in _PERSON_SUBTYPES:
        return provider_type
    if inner.thread_ts and inner.thread_ts != inner.ts:
        return EventType.AGENT_REPLY
    return EventType.MESSAGE_RECEIVED


def _event_data(
    envelope: SlackEnvelope, inner: SlackInnerEvent, user: str | None, channel: str | None
) -> dict[str, Any]:
    return {
        "event_type": inner.type,
        "subtype": inner.subtype,
        "channel": channel,
        "channel_type": inner.channel_type,
        "ts": inner.ts or (inner.item.ts if inner.item else None),
        "thread_ts": inner.thread_ts,
        "team": envelope.team_id,
        "api_app_id": envelope.api_app_id,
        "user": user,
        "bot_id": inner.bot_id,
    }


def _ref_id(value: str | dict[str, Any] | None) -> str | None:
    """A user or channel id, whether Slack sent the id or an object carrying it."""
    if isinstance(value, dict):
        found = value.get("id")
        return found if isinstance(found, str) else None
    return value or None


def _attachment(file: SlackFile) -> Attachment:
    return Attachment(
        url=file.url_private, filename=file.name, content_type=file.mimetype, size=file.size
    )


def _from_ts(ts: str | None) -> datetime | None:
    """Slack `ts` (`1700000000.000100`) as a UTC datetime."""
    try:
        return datetime.fromtimestamp(float(ts), UTC) if ts else None
    except (ValueError, OverflowError, OSError):
        return None


def _from_unix(seconds: int | None) -> datetime | None:
    return _from_ts(str(seconds)) if seconds is not None else None


def _interaction_event(request: InboundRequest, interaction: SlackInteraction, key: str) -> Event:
    """Any interaction (shortcut, view submission, ...), stored under its own type."""
    user, container = interaction.user, interaction.container or SlackContainer()
    channel = container.channel_id or (interaction.channel.id if interaction.channel else None)
    return Event(
        id=new_ulid(request.received_at),
        source="slack",
        type=interaction.type,
        provider_type=interaction.type,
        dedupe_key=key,
        channel=Channel.SLACK,
        contact=Contact(address=user.id, name=user.username) if user else None,
        data={
            "user": user.id if user else None,
            "team": interaction.team.id if interaction.team else None,
            "channel": channel,
            "response_url": interaction.response_url,
            "trigger_id": interaction.trigger_id,
        },
        received_at=request.received_at,
        correlation_id=request.correlation_id,
    )


def _action_event(
    request: InboundRequest, interaction: SlackInteraction, action: SlackAction, key: str
) -> Event:
    """One button press: `agent.action`, keyed to the thread the button sits in."""
    base = _interaction_event(request, interaction, key)
    container = interaction.container or SlackContainer()
    message = interaction.message or SlackMessageRef()
    message_ts = container.message_ts or message.ts
    thread_ts = container.thread_ts or message.thread_ts
    root_ts, channel = thread_ts or message_ts, base.data["channel"]
    return msgspec.structs.replace(
        base,
        type=EventType.AGENT_ACTION,
        provider_type=f"block_actions.{action.type}" if action.type else "block_actions",
        conversation_key=slack_thread(channel, root_ts) if channel and root_ts else None,
        data={
            **base.data,
            "action_id": action.action_id,
            "block_id": action.block_id,
            "value": action.value,
            "message_ts": message_ts,
            "thread_ts": thread_ts,
        },
        occurred_at=_from_ts(action.action_ts),
    )

"""The shape every sender shares (SPEC §8): one outbox row in, the provider's message id out,
or a failure classified the way the dispatcher acts on it.

Senders know their provider and these shapes, nothing else: no store, no outbox, no retries of
their own (an SDK's own retries are switched off: a persisted outbox retries, and a hidden
retry of a POST that was in fact accepted would send twice). The dispatcher owns attempts,
backoff, rate limits, circuit breakers and in-doubt checks.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol

import msgspec


class Outgoing(msgspec.Struct, frozen=True, kw_only=True):
    """An outbox row as a sender sees it."""

    #: The outbox id: carried to the provider wherever it can be (Slack metadata, Twilio's
    #: StatusCallback query, the email Message-ID, the `webhook-id` of a forward), so a send
    #: can be recognised afterwards.
    id: str
    #: `sms`, `whatsapp`, `slack`, `email` or `http`.
    channel: str
    #: Phone number, email address, Slack channel id, or forward destination name.
    to: str
    category: str
    kind: str
    #: `{text}`, `{text, subject}`, `{text, blocks}`, `{event}`; plus `from` and `thread_ts`.
    payload: dict[str, Any]
    conversation_key: str | None = None
    #: Tries made before this one.
    attempts: int = 0


class Sent(msgspec.Struct, frozen=True, kw_only=True):
    """The provider took the message."""

    #: Twilio's SM sid, Slack's ts, the email Message-ID, or the forward's webhook-id.
    provider_message_id: str
    #: The provider's status on acceptance when it tells one (`queued`, `accepted`).
    status: str = "sent"


class FailureKind(StrEnum):
    """How the dispatcher treats a failed attempt (notes/outbound-providers.md)."""

    #: The provider did not act: retry later (backoff, or `retry_after` when it said).
    TRANSIENT = "transient"
    #: Retrying cannot help (invalid number, channel not found, 5xx SMTP, 410): dead at once.
    PERMANENT = "permanent"
    #: It may have been accepted (a timeout or reset after the request went out, a 5xx on a
    #: non-idempotent create): check with the provider before any resend.
    IN_DOUBT = "in_doubt"
    #: The recipient has opted out at the carrier (Twilio 21610): cancel, record consent.
    OPTED_OUT = "opted_out"


class SendFailed(Exception):
    """An attempt failed; `reason` is for people (it is kept on the row and shown in `dlq`)."""

    def __init__(
        self,
        kind: FailureKind,
        reason: str,
        *,
        code: str | None = None,
        retry_after: float | None = None,
        unanswered: bool = False,
    ) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason
        #: The provider's own code (`21211`, `channel_not_found`, `550`), when there is one.
        self.code = code
        #: Seconds the provider asked to wait (HTTP Retry-After), for a transient failure.
        self.retry_after = retry_after
        #: In doubt with no answer at all (a timeout, a connection lost after the request
        #: went out): the request may still be on its way and land after a look made at once,
        #: so the dispatcher gives it time before it looks.
        self.unanswered = unanswered


class NotCheckable(Exception):
    """The provider offers no way to tell whether a message was accepted (SMTP)."""


class Sender(Protocol):
    """One provider's sending side."""

    #: The channels this sender serves (`("sms", "whatsapp")`, `("slack",)`, ...).
    channels: tuple[str, ...]

    def destination(self, message: Outgoing) -> str:
        """The key rate limits and the circuit breaker count by: the sender number (SMS,
        WhatsApp), the Slack channel, the SMTP host, the forward destination."""
        ...

    def units(self, message: Outgoing) -> int:
        """How many of the destination's rate slots one send takes: the SMS segments a
        carrier bills and a long code sends one a second (Twilio), 1 elsewhere."""
        ...

    async def send(self, message: Outgoing) -> Sent:
        """Hand the message to the provider once; raise SendFailed, classified."""
        ...

    async def find(self, message: Outgoing, since: datetime) -> Sent | None:
        """Was this message accepted by an attempt started at `since` (a crash left it in
        doubt)? The Sent if so, None if surely not; NotCheckable if the provider cannot tell."""
        ...

    async def start(self) -> None:
        """Import the SDK and build its client now, on the loop that will use it: done at the
        first send instead, it would hold the loop (and the rate spacing) for a moment."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...

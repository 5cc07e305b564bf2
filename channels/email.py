"""Inbound email: Mailgun routes and SendGrid Inbound Parse (placeholder until implemented)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from channels.base import InboundRequest, Parsed, SignatureError
from router.clock import Clock


class MailgunAdapter:
    source = "mailgun"
    content_types: ClassVar[frozenset[str]] = frozenset(
        {"multipart/form-data", "application/x-www-form-urlencoded"}
    )

    def __init__(self, signing_keys: Sequence[str], tolerance_seconds: int, clock: Clock) -> None:
        self._keys = list(signing_keys)

    def verify(self, request: InboundRequest) -> None:
        raise SignatureError("not implemented")

    def parse(self, request: InboundRequest) -> Parsed:
        raise NotImplementedError


class SendgridAdapter:
    source = "sendgrid"
    content_types: ClassVar[frozenset[str]] = frozenset({"multipart/form-data"})

    def __init__(self, credentials: Sequence[str]) -> None:
        self._credentials = list(credentials)

    def verify(self, request: InboundRequest) -> None:
        raise SignatureError("not implemented")

    def parse(self, request: InboundRequest) -> Parsed:
        raise NotImplementedError

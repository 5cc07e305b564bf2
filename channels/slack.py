"""Slack Events API and interactions (placeholder until implemented)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from channels.base import InboundRequest, Parsed, SignatureError
from router.clock import Clock


class SlackEventsAdapter:
    source = "slack"
    content_types: ClassVar[frozenset[str]] = frozenset({"application/json"})

    def __init__(
        self, signing_secrets: Sequence[str], tolerance_seconds: int, clock: Clock
    ) -> None:
        self._secrets = list(signing_secrets)

    def verify(self, request: InboundRequest) -> None:
        raise SignatureError("not implemented")

    def parse(self, request: InboundRequest) -> Parsed:
        raise NotImplementedError


class SlackInteractionsAdapter(SlackEventsAdapter):
    content_types: ClassVar[frozenset[str]] = frozenset({"application/x-www-form-urlencoded"})

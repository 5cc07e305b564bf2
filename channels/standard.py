"""Custom sources signed with Standard Webhooks (placeholder until implemented)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from channels.base import InboundRequest, Parsed, SignatureError
from router.clock import Clock


class StandardWebhooksAdapter:
    content_types: ClassVar[frozenset[str]] = frozenset({"application/json"})

    def __init__(
        self, name: str, secrets: Sequence[str], tolerance_seconds: int, clock: Clock
    ) -> None:
        self.source = name
        self._secrets = list(secrets)

    def verify(self, request: InboundRequest) -> None:
        raise SignatureError("not implemented")

    def parse(self, request: InboundRequest) -> Parsed:
        raise NotImplementedError

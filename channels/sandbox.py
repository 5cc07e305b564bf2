"""Sandbox mode (`mode = "sandbox"`, SPEC §5): a sender that calls nobody.

Every message is recorded as delivered at once, with a made-up provider id: a Slack-style ts
for Slack (so escalation threads map as they would live), `sandbox-<outbox id>` otherwise.
`make run` uses it for every channel, so a demo shows the whole path without sending anything.
"""

from __future__ import annotations

import itertools
import time
from datetime import datetime

from channels.outbound import Outgoing, Sent


class SandboxSender:
    """Accepts everything, sends nothing."""

    def __init__(self, channels: tuple[str, ...]) -> None:
        self.channels = channels
        self._sequence = itertools.count(1)
        #: What it "sent", in order (for people reading a demo's logs and for tests).
        self.sent: list[Outgoing] = []

    def destination(self, message: Outgoing) -> str:
        return "sandbox"

    def units(self, message: Outgoing) -> int:
        return 1

    async def send(self, message: Outgoing) -> Sent:
        self.sent.append(message)
        if message.channel == "slack":
            ts = f"{int(time.time())}.{next(self._sequence):06d}"
            return Sent(provider_message_id=ts, status="delivered")
        return Sent(provider_message_id=f"sandbox-{message.id}", status="delivered")

    async def find(self, message: Outgoing, since: datetime) -> Sent | None:
        return None  # nothing was ever sent: a resend is a no-op as well

    async def start(self) -> None:
        return None  # nothing to build ahead

    async def close(self) -> None:
        return None

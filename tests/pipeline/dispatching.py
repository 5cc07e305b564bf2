"""Dispatchers for tests that drive one round at a time: a real `Dispatcher` on a given store
and clock, its senders built from config as `serve` builds them, against loopback fakes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from router.clock import Clock
from router.config import load_settings
from router.http.providers import senders
from router.metrics import Metrics
from router.pipeline.dispatch import Dispatcher
from router.store.base import Store
from tests.fakes.twilio_api import FakeTwilio
from tests.support import config_text


def twilio_channel(fake: FakeTwilio, sender: str, rate_per_second: float = 1000) -> str:
    """The `[channels.sms]` table of a live SMS channel against `fake`, sending from `sender`."""
    return f"""
[channels.sms]
account_sid = "{fake.account_sid}"
auth_token = "{fake.auth_token}"
from = "{sender}"
mode = "live"
api_base = "{fake.url}"
rate_per_second = {rate_per_second}
"""


@asynccontextmanager
async def dispatcher_on(
    store: Store, clock: Clock, tmp_path: Path, config: str, name: str = "dispatch"
) -> AsyncIterator[Dispatcher]:
    """A dispatcher on `store` and `clock`, configured by the TOML `config` (its channels and
    `[dispatch]`); its senders open while inside. Rounds are the test's to run."""
    path = tmp_path / f"{name}.toml"
    path.write_text(config_text(tmp_path / "unused.db", extra=config))
    settings = load_settings(path)
    by_channel = senders(settings)
    distinct = list({id(s): s for s in by_channel.values()}.values())
    for sender in distinct:
        await sender.start()
    try:
        yield Dispatcher(store, settings, by_channel, clock, Metrics())
    finally:
        for sender in distinct:
            await sender.close()

# ruff: noqa: F811  (the `store` fixture is imported, then named by the tests)
"""Upkeep forgets one-time tokens only once no verifier would accept them any more."""

from __future__ import annotations

from datetime import timedelta

from router.clock import FrozenClock
from router.config import parse_settings
from router.store.base import IngestOutcome, Store
from router.store.housekeeping import nonce_retention, upkeep_once
from tests.router.test_store import backend, event, item, store  # noqa: F401  (fixtures)


async def test_tokens_are_kept_within_the_tolerance_and_forgotten_after(
    store: Store, clock: FrozenClock
) -> None:
    settings = parse_settings('[sources.mailgun]\nsigning_keys = ["k"]\ntolerance_seconds = 300\n')
    assert nonce_retention(settings) == timedelta(seconds=660)
    first = event("m1", source="mailgun", at=clock.now())
    assert await store.ingest(item(first, nonce="tok")) is IngestOutcome.STORED

    clock.advance(timedelta(minutes=10))
    await upkeep_once(store, clock, settings)
    replay = event("m2", source="mailgun", at=clock.now())
    assert await store.ingest(item(replay, nonce="tok")) is IngestOutcome.REPLAY

    clock.advance(timedelta(minutes=2))
    await upkeep_once(store, clock, settings)
    later = event("m3", source="mailgun", at=clock.now())
    assert await store.ingest(item(later, nonce="tok")) is IngestOutcome.STORED

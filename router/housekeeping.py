"""Background upkeep of the store while the server runs (one task, cancelled at shutdown)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from router.clock import Clock
from router.config import Settings
from router.errors import StoreUnavailable
from router.logs import get_logger
from router.store.base import Store

log = get_logger("switchboard.housekeeping")

#: How often the upkeep runs.
INTERVAL_SECONDS = 600.0


def nonce_retention(settings: Settings) -> timedelta:
    """How long one-time tokens must be remembered: past that, their signed timestamp is
    refused anyway (twice the tolerance, for clock skew in both directions)."""
    mailgun = settings.sources.mailgun
    tolerance = mailgun.tolerance_seconds if mailgun else 300
    return timedelta(seconds=2 * tolerance + 60)


async def upkeep_once(store: Store, clock: Clock, settings: Settings) -> None:
    """One pass: forget one-time tokens no verifier would accept any more."""
    await store.prune_nonces(clock.now() - nonce_retention(settings))


async def upkeep_forever(store: Store, clock: Clock, settings: Settings) -> None:
    """Run `upkeep_once` every INTERVAL_SECONDS; a store hiccup is logged, never fatal."""
    while True:
        try:
            await upkeep_once(store, clock, settings)
        except StoreUnavailable as exc:
            log.warning("upkeep skipped", stage="housekeeping", error=str(exc))
        await asyncio.sleep(INTERVAL_SECONDS)

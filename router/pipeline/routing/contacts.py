"""The consent of the contacts one routed batch touches, read once per batch (SPEC §7)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from router.store.records import ContactRecord

#: Reads the stored contacts among some keys (`Store.contacts`); the unknown ones are absent.
ContactLookup = Callable[[list[str]], Awaitable[dict[str, ContactRecord]]]


class ContactBook:
    """Consent of the contacts one batch touches, read once and kept up to date in memory as
    the batch's own keywords change it (a STOP early in the batch binds rows made later)."""

    def __init__(self, lookup: ContactLookup) -> None:
        self._lookup = lookup
        self._known: dict[str, ContactRecord] = {}

    async def prefetch(self, keys: list[str]) -> None:
        missing = [key for key in dict.fromkeys(keys) if key not in self._known]
        if missing:
            found = await self._lookup(missing)
            for key in missing:
                self._known[key] = found.get(key) or ContactRecord(address=key)

    async def get(self, key: str) -> ContactRecord:
        await self.prefetch([key])
        return self._known[key]

    def put(self, record: ContactRecord) -> None:
        self._known[record.address] = record

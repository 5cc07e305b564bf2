"""`switchboard replay` and `POST /api/replay`: routed events through the rules again.

Rows are made with the same deterministic ids as the first time, so a row that exists is not
made again and only new actions (a rule added or changed since) make new rows. Consent and
quiet hours apply as of now: a replay never sends to a contact who opted out since. A dry run
decides the same way and writes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime

import msgspec

from router.config import Settings
from router.events import Event, EventStatus
from router.pipeline.routing.route import ContactBook, LaneRouter
from router.rules import RuleSet, Snapshot
from router.store.base import EventFilter, Store
from router.store.records import EventResult, OutboxRow, RunRecord
from statemachines import consent

#: Events routed per transaction.
BATCH = 200
#: Statuses a replay takes: routed ones (a `failed` event that now routes becomes `processed`).
REPLAYABLE = (EventStatus.PROCESSED, EventStatus.FAILED)


class ReplayedEvent(msgspec.Struct, frozen=True, kw_only=True):
    """What the replay decided for one event."""

    event_id: str
    source: str
    type: str
    matched: list[str]
    #: Rows it made (or, in a dry run, would make).
    new_rows: list[dict[str, object]]
    #: Ids of rows that already existed, left as they are.
    existing_rows: list[str]
    #: Actions not performed again (`escalate`, `tag`, `set`).
    skipped: list[str]
    errors: list[str]


class ReplayReport(msgspec.Struct, kw_only=True):
    rules_version: str
    dry_run: bool
    events: int = 0
    rows_made: int = 0
    rows_existing: int = 0
    replayed: list[ReplayedEvent] = []


async def select(store: Store, where: EventFilter) -> list[Event]:
    """Every routed event `where` selects, oldest first (paged through the store)."""
    found: list[Event] = []
    cursor = where.before
    while True:
        page = await store.list_events(msgspec.structs.replace(where, before=cursor, limit=500))
        found += [event for event in page if event.status in REPLAYABLE]
        if len(page) < 500:
            break
        cursor = page[-1].id
    return sorted(found, key=lambda event: event.id)


async def replay(
    store: Store,
    settings: Settings,
    ruleset: RuleSet,
    events: Iterable[Event],
    now: Callable[[], datetime],
    *,
    dry_run: bool,
    advance: Callable[[int], None] = lambda _: None,
) -> ReplayReport:
    """Replay `events` in order; `advance(n)` after each batch (a progress bar)."""
    router = LaneRouter(settings, lambda: ruleset, store.escalation_post)
    report = ReplayReport(rules_version=ruleset.version, dry_run=dry_run)
    batch: list[Event] = []
    for event in events:
        batch.append(event)
        if len(batch) >= BATCH:
            await _batch(store, router, ruleset, batch, now(), report, dry_run)
            advance(len(batch))
            batch = []
    if batch:
        await _batch(store, router, ruleset, batch, now(), report, dry_run)
        advance(len(batch))
    return report


async def _batch(
    store: Store,
    router: LaneRouter,
    ruleset: RuleSet,
    events: list[Event],
    now: datetime,
    report: ReplayReport,
    dry_run: bool,
) -> None:
    book = ContactBook(store.contacts)
    await book.prefetch(
        [consent.contact_key(e.contact.address) for e in events if e.contact is not None]
    )
    decided: list[tuple[Event, list[OutboxRow], ReplayedEvent]] = []
    results: list[EventResult] = []
    for event in events:
        snapshot = recorded_snapshot(await store.runs(event.id))
        decision, rows, skipped = await router.replay(event, ruleset, snapshot, book, now)
        run = RunRecord(
            event_id=event.id,
            at=now,
            rules_version=decision.rules_version,
            matched=list(decision.matched),
            actions=[msgspec.to_builtins(action) for action in decision.actions],
            outbox_ids=[row.id for row in rows],
            error="; ".join(decision.errors) or None,
            conversation=msgspec.to_builtins(snapshot.conversation)
            if snapshot.conversation is not None
            else None,
            replay=True,
        )
        results.append(EventResult(event_id=event.id, status=EventStatus.PROCESSED, run=run))
        shown = ReplayedEvent(
            event_id=event.id,
            source=event.source,
            type=event.type,
            matched=list(decision.matched),
            new_rows=[],
            existing_rows=[],
            skipped=skipped,
            errors=list(decision.errors),
        )
        decided.append((event, rows, shown))
    all_rows = [row for _, rows, _ in decided for row in rows]
    if dry_run:
        existing = await store.existing_outbox_ids([row.id for row in all_rows])
        made = {row.id for row in all_rows} - existing
    else:
        made = set(await store.commit_replay(results, all_rows))
    for _, rows, shown in decided:
        new = [msgspec.to_builtins(row) for row in rows if row.id in made]
        old = [row.id for row in rows if row.id not in made]
        report.replayed.append(msgspec.structs.replace(shown, new_rows=new, existing_rows=old))
        report.rows_made += len(new)
        report.rows_existing += len(old)
    report.events += len(events)


def recorded_snapshot(runs: Iterable[RunRecord]) -> Snapshot:
    """The conversation the rules saw when the event was first routed (SPEC: replay and
    `rules diff` evaluate with the stored state); no conversation if it was never routed."""
    for run in runs:
        if run.conversation is not None:
            return msgspec.convert({"conversation": run.conversation}, Snapshot)
    return Snapshot()

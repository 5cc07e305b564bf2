"""The status object (SPEC §12), field for field; times are RFC 3339, ages in seconds."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec

#: A breaker as status shows it: `open` holds sends back; `half_open` has waited its
#: `dispatch.breaker_open_seconds` and lets the next send probe the destination.
BreakerView = Literal["open", "half_open", "closed"]


class ServerStatus(msgspec.Struct, frozen=True, kw_only=True):
    """The running server, as its `/readyz` answered (null versions when it did not)."""

    url: str
    ready: bool
    rules_version: str | None
    rules_error: str | None


class EventsStatus(msgspec.Struct, frozen=True, kw_only=True):
    #: Stored but not yet routed (`received`, `processing`).
    waiting: int
    oldest_waiting_seconds: float | None
    failed: int


class OutboxStatus(msgspec.Struct, frozen=True, kw_only=True):
    #: `pending` or `deferred` rows whose time has come: waiting for a dispatcher.
    due: int
    oldest_due_seconds: float | None
    #: Rows held for later (quiet hours, a consent review), due or not.
    deferred: int
    sending: int
    dead: int


class EscalationsStatus(msgspec.Struct, frozen=True, kw_only=True):
    #: Conversations with people: not yet claimed (`escalated`) and claimed (`agent`).
    open: int
    unclaimed: int
    oldest_unclaimed_seconds: float | None


class ReconcileSource(msgspec.Struct, frozen=True, kw_only=True):
    last_success: datetime | None
    recovered: int


class BackupStatus(msgspec.Struct, frozen=True, kw_only=True):
    last: datetime | None
    age_seconds: float | None


class StorageStatus(msgspec.Struct, frozen=True, kw_only=True):
    #: The database (SQLite: its file and WAL; PostgreSQL: the database).
    bytes: int
    blobs_bytes: int
    #: Free space of the disk the SQLite file is on; null on PostgreSQL.
    disk_free_bytes: int | None


class Status(msgspec.Struct, frozen=True, kw_only=True):
    server: ServerStatus
    events: EventsStatus
    outbox: OutboxStatus
    escalations: EscalationsStatus
    #: Destinations whose breaker has ever opened, by state.
    breakers: dict[str, BreakerView]
    reconcile: dict[str, ReconcileSource]
    backup: BackupStatus
    storage: StorageStatus
    #: What needs a person, most urgent first; empty when all is well (exit 0).
    alerts: list[str]


class ServerCheck(msgspec.Struct, frozen=True, kw_only=True):
    """The server's part of the status, and why it is not ready when it is not (for the alert:
    nothing answers, or the store is unavailable)."""

    status: ServerStatus
    problem: str | None = None

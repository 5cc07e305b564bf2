"""Prometheus metrics of one app instance (own registry, so tests can build many apps)."""

from __future__ import annotations

import msgspec
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from router.store.records import Pruned


class Metrics:
    """Counters the HTTP edge and the rule engine update; exposed on GET /metrics."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.webhooks = Counter(
            "switchboard_webhooks_total",
            "Inbound webhook requests by source and outcome "
            "(stored, duplicate, ignored, unauthorized, malformed, unavailable, ...).",
            ["source", "outcome"],
            registry=self.registry,
        )
        self.ingest_seconds = Histogram(
            "switchboard_ingest_seconds",
            "Time from request start to answer, for stored events.",
            ["source"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=self.registry,
        )
        self.rules_reload = Counter(
            "switchboard_rules_reload_total",
            "Rules reload attempts by outcome (ok, invalid).",
            ["outcome"],
            registry=self.registry,
        )
        self.rules_valid = Gauge(
            "switchboard_rules_valid",
            "1 when the rules files on disk are the live version, 0 when the last edit is invalid.",
            registry=self.registry,
        )

        self.routed = Counter(
            "switchboard_events_routed_total",
            "Events routed by the worker, by outcome (processed, failed, retry, fenced).",
            ["outcome"],
            registry=self.registry,
        )
        self.outbox_rows = Counter(
            "switchboard_outbox_rows_created_total",
            "Outbox rows made by routing (a replay that finds its rows makes none).",
            registry=self.registry,
        )
        self.pruned = Counter(
            "switchboard_pruned_total",
            "What retention (storage.retention_days) removed: events, outbox_rows, quarantined,"
            " receipts.",
            ["what"],
            registry=self.registry,
        )
        self.route_batch_seconds = Histogram(
            "switchboard_route_batch_seconds",
            "Time to route and commit one claimed batch.",
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 1.0, 5.0),
            registry=self.registry,
        )

        self.send_attempts = Counter(
            "switchboard_send_attempts_total",
            "Send attempts by channel and outcome (sent, retry, in_doubt, dead, cancelled, "
            "fenced).",
            ["channel", "outcome"],
            registry=self.registry,
        )
        self.send_seconds = Histogram(
            "switchboard_send_seconds",
            "Time of one send attempt, by channel.",
            ["channel"],
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=self.registry,
        )
        self.dead_letters = Counter(
            "switchboard_dead_letters_total",
            "Outbox rows that went dead, by channel.",
            ["channel"],
            registry=self.registry,
        )
        self.breaker_state = Gauge(
            "switchboard_breaker_state",
            "1 for the current state of each destination's circuit breaker.",
            ["destination", "state"],
            registry=self.registry,
        )
        self.outbox = Gauge(
            "switchboard_outbox_rows",
            "Outbox rows by status and channel (read from the store when scraped).",
            ["status", "channel"],
            registry=self.registry,
        )
        self.queue_age = Gauge(
            "switchboard_outbox_oldest_due_seconds",
            "How long the oldest due row has been waiting (0 when none is).",
            registry=self.registry,
        )

        self.reconcile_recovered = Counter(
            "switchboard_reconcile_recovered_total",
            "Events reconciliation fetched from a provider because no webhook brought them.",
            ["source"],
            registry=self.registry,
        )
        self.reconcile_errors = Counter(
            "switchboard_reconcile_errors_total",
            "Reconciliation passes of a source that failed (retried at the next pass).",
            ["source"],
            registry=self.registry,
        )
        self.reconcile_last_success = Gauge(
            "switchboard_reconcile_last_success_timestamp_seconds",
            "Unix time up to which the last successful reconciliation pass of a source looked "
            "(read from the store when scraped: any process of the fleet may have run it).",
            ["source"],
            registry=self.registry,
        )

    def count_pruned(self, pruned: Pruned) -> None:
        """What one retention pass removed (`housekeeping.upkeep_once`)."""
        for what, count in msgspec.structs.asdict(pruned).items():
            self.pruned.labels(what).inc(count)

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)

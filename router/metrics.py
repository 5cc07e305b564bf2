"""Prometheus metrics of one app instance (own registry, so tests can build many apps)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


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
        self.route_batch_seconds = Histogram(
            "switchboard_route_batch_seconds",
            "Time to route and commit one claimed batch.",
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 1.0, 5.0),
            registry=self.registry,
        )

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)

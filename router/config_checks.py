"""Checks on values that type-correct TOML can still get wrong (names, formats, zones).

Each check returns `(dotted key, message)`; `router.config.parse_settings` turns the first into
a ConfigError located at that key's line.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterator
from urllib.parse import urlsplit

from router.config import MIN_RETENTION_DAYS, Settings
from router.timeutil import parse_duration
from router.timewindows import load_zone, parse_window

BUILTIN_SOURCES = frozenset({"twilio", "slack", "stripe", "mailgun", "sendgrid"})
_SOURCE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_BASE64 = re.compile(r"^[A-Za-z0-9+/]+={0,2}$")
#: A console user's name: it is shown on pages and carried in the session cookie.
_USER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_CLOCK_RANGE = re.compile(r"^([01]\d|2[0-3]):[0-5]\d-([01]\d|2[0-3]):[0-5]\d$")

Problem = tuple[str, str]


def problems(settings: Settings) -> Iterator[Problem]:
    """Every semantic problem of `settings`, in file order as far as possible."""
    yield from _server(settings)
    yield from _custom_sources(settings)
    yield from _compliance(settings)
    yield from _durations(settings)
    yield from _windows(settings)
    yield from _backup(settings)
    yield from _reconcile(settings)
    yield from _console(settings)


def _server(settings: Settings) -> Iterator[Problem]:
    url = urlsplit(settings.server.public_url)
    if url.scheme not in ("http", "https") or not url.netloc:
        yield "server.public_url", "expected the URL providers call, e.g. https://hooks.example.com"
    storage = settings.storage
    if not storage.url.startswith(("sqlite:///", "postgresql://", "postgres://")):
        yield "storage.url", "expected sqlite:///PATH or postgresql://USER@HOST/DB"
    if storage.pool_min_size > storage.pool_max_size:
        yield "storage.pool_min_size", "must be at most storage.pool_max_size"
    if 0 < storage.retention_days < MIN_RETENTION_DAYS:
        yield (
            "storage.retention_days",
            f"must be 0 (keep everything) or at least {MIN_RETENTION_DAYS}: a provider may"
            " redeliver a webhook days later, and only a stored original makes it a duplicate",
        )
    if settings.server.max_body_memory_bytes < settings.server.max_body_bytes:
        yield (
            "server.max_body_memory_bytes",
            "must be at least server.max_body_bytes, or the largest body could never be taken in",
        )


def _custom_sources(settings: Settings) -> Iterator[Problem]:
    for name, source in settings.sources.custom.items():
        key = f"sources.custom.{name}"
        if name in BUILTIN_SOURCES:
            yield key, f"{name!r} is a built-in source; choose another name for a custom source"
        elif not _SOURCE_NAME.match(name):
            yield key, "a source name is lower-case letters, digits, '-' and '_' (it is a URL part)"
        for secret in source.secrets:
            if not _is_standard_webhooks_secret(secret):
                yield f"{key}.secrets", "expected a Standard Webhooks secret: whsec_ + base64"


def _is_standard_webhooks_secret(secret: str) -> bool:
    """Base64 after an optional `whsec_`, padding forgiven, as the reference library reads it."""
    encoded = secret.removeprefix("whsec_")
    if not _BASE64.match(encoded):
        return False
    try:
        return bool(base64.b64decode(encoded + "=="))
    except binascii.Error:
        return False


def _compliance(settings: Settings) -> Iterator[Problem]:
    compliance = settings.compliance
    if not _CLOCK_RANGE.match(compliance.quiet_hours.replace(" ", "")):
        yield "compliance.quiet_hours", "expected HH:MM-HH:MM, e.g. 21:00-08:00"
    try:
        load_zone(compliance.default_timezone)
    except ValueError as exc:
        yield "compliance.default_timezone", str(exc)


def _durations(settings: Settings) -> Iterator[Problem]:
    for name in ("claim_timeout", "inactivity_close"):
        try:
            parse_duration(getattr(settings.escalation, name))
        except ValueError as exc:
            yield f"escalation.{name}", str(exc)


def _windows(settings: Settings) -> Iterator[Problem]:
    for name, spec in settings.windows.items():
        try:
            parse_window(spec)
        except ValueError as exc:
            yield f"windows.{name}", str(exc)


def _backup(settings: Settings) -> Iterator[Problem]:
    interval = settings.backup.interval
    if interval.strip() == "0":
        return
    try:
        parse_duration(interval)
    except ValueError as exc:
        yield "backup.interval", f'{exc}, or "0" for no scheduled backups'
        return
    if not settings.storage.url.startswith("sqlite:///"):
        yield (
            "backup.interval",
            "scheduled backups copy a SQLite store; on PostgreSQL use pg_dump"
            ' (README.md, "Backups on PostgreSQL") and set "0"',
        )


def _reconcile(settings: Settings) -> Iterator[Problem]:
    stripe = settings.sources.stripe
    if stripe is not None and stripe.api_base is not None:
        base = urlsplit(stripe.api_base)
        if base.scheme not in ("http", "https") or not base.netloc:
            yield "sources.stripe.api_base", "expected a base URL, e.g. https://api.stripe.com"
    reconcile = settings.reconcile
    if reconcile.interval.strip() != "0":
        try:
            if parse_duration(reconcile.interval).total_seconds() <= 0:
                yield "reconcile.interval", 'must be a positive duration, or "0" for never'
        except ValueError as exc:
            yield "reconcile.interval", f'{exc}, or "0" for never'
    try:
        if parse_duration(reconcile.lookback).total_seconds() <= 0:
            yield "reconcile.lookback", "must be a positive duration, e.g. 24h"
    except ValueError as exc:
        yield "reconcile.lookback", str(exc)


def _console(settings: Settings) -> Iterator[Problem]:
    for name in settings.console.users:
        key = f"console.users.{name}"
        if name == "admin":
            yield key, "'admin' is who signs in with server.admin_token; choose another name"
        elif not _USER_NAME.match(name):
            yield key, "a user name is letters, digits, '.', '-' and '_' (at most 63)"

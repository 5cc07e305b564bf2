"""What every `switchboard` command shares: the config, the store, JSON out, people's output.

Kept apart from `router/cli/main.py` so command modules (`router/cli/routing.py`) can use it
without importing the main module that registers them.
"""

from __future__ import annotations

import asyncio
import sys
import unicodedata
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click
import msgspec

from router.config import ConfigError, Settings, load_settings
from router.errors import StoreUnavailable, SwitchboardError
from router.logs import log_to_stderr_unless_configured
from router.store.base import Store
from router.store.factory import store_from_settings

if TYPE_CHECKING:
    from rich.console import Console
    from rich.text import Text

T = TypeVar("T")


class Failure(click.ClickException):
    """A failure the user can act on: message on stderr, exit code 1."""

    exit_code = 1


def settings_of(ctx: click.Context) -> Settings:
    """The config named by `--config` (or $SWITCHBOARD_CONFIG), read once per invocation."""
    obj: dict[str, Any] = ctx.ensure_object(dict)
    if "settings" not in obj:
        try:
            obj["settings"] = load_settings(obj.get("config"))
        except ConfigError as exc:
            raise Failure(str(exc)) from exc
    settings: Settings = obj["settings"]
    return settings


def with_store(ctx: click.Context, work: Callable[[Store], Awaitable[T]]) -> T:
    """Open the configured store, run `work` on it, close it; store trouble is a Failure."""
    settings = settings_of(ctx)
    log_to_stderr_unless_configured()

    async def run() -> T:
        try:
            store = store_from_settings(settings)
        except ValueError as exc:
            raise Failure(str(exc)) from exc
        await store.open()
        try:
            return await work(store)
        finally:
            await store.close()

    try:
        return asyncio.run(run())
    except StoreUnavailable as exc:
        raise Failure(f"store unavailable: {exc}") from exc
    except SwitchboardError as exc:
        raise Failure(str(exc)) from exc


def print_json(payload: Any) -> None:
    """`--json`: the payload, indented, and nothing else on stdout."""
    sys.stdout.buffer.write(msgspec.json.format(msgspec.json.encode(payload), indent=2) + b"\n")
    sys.stdout.flush()


def console() -> Console:
    """Output for people: colour only on a terminal; no wrapping when piped."""
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 10_000)


def plain(value: object, limit: int | None = None) -> Text:
    """A table cell of text the store holds (customer messages, addresses): never read as rich
    markup, control characters (escape sequences, newlines) shown as `?` or a space, cut to
    `limit` characters with an ellipsis."""
    from rich.text import Text

    if value is None:
        return Text("-")
    text = "".join(" " if ch in "\n\r\t" else "?" if _hidden(ch) else ch for ch in str(value))
    if limit is not None and len(text) > limit:
        text = text[: limit - 1] + "…"
    return Text(text)


def _hidden(ch: str) -> bool:
    """Control characters and the bidirectional overrides that reorder what a terminal shows."""
    return unicodedata.category(ch) == "Cc" or ch in _BIDI


_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def when(value: str | None) -> str:
    """An RFC 3339 time as `YYYY-MM-DD HH:MM:SS` (UTC as stored), or `-`."""
    if not value:
        return "-"
    return value.replace("T", " ")[:19]

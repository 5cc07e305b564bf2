"""The live rules of a running server: load at start-up, reload on change or SIGHUP.

A valid change becomes live by swapping one reference, so a reader sees either the old rule set or
the new one, never a mix. An invalid change never replaces the live version: it is logged with
file:line:col, shown on /readyz as `rules_error` and counted in the metrics, and the previous
version keeps routing. A missing rules folder is treated like an invalid change (an accidental
`rm -r` must not drop every rule). At start-up there is no previous version to keep, so rules
that cannot be loaded are fatal: `start` raises RulesUnavailable (and `serve` checks with
`first_load` before it listens, to print the located errors and exit 1). An empty folder is a
valid, empty rule set. A failing watcher is reported the same way (/readyz, metrics) while the
poll keeps the rules fresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import sys
import threading
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path
from typing import Any

from router.aio import wait_event
from router.config import Settings
from router.logs import get_logger
from router.metrics import Metrics
from router.rules import RuleError, RuleSet, RulesInvalid, load_ruleset, rules_version

_log = get_logger("rules")

#: How many errors /readyz spells out before summarising the rest.
_SHOWN_ERRORS = 10
_RULE_SUFFIXES = (".yaml",)


#: How often a working watcher says so (clearing an earlier watch error), in milliseconds.
WATCH_HEARTBEAT_MS = 1000
#: How often `poll` compares the files on disk with what the last reload read, by default.
POLL_SECONDS = 2.0


class RulesUnavailable(Exception):
    """No valid rules could be loaded at start-up; the message lists the located errors."""


class _Live:
    """One consistent view: the rule set that routes and the last reload's error (if any)."""

    __slots__ = ("error", "errors", "ruleset")

    def __init__(
        self, ruleset: RuleSet | None, error: str | None, errors: tuple[RuleError, ...] = ()
    ) -> None:
        self.ruleset = ruleset
        self.error = error
        self.errors = errors


def describe_errors(errors: list[RuleError] | tuple[RuleError, ...]) -> str:
    """`billing.yaml:12:7: ...; support.yaml:3:1: ...` (the first few, then a count)."""
    shown = "; ".join(str(error) for error in errors[:_SHOWN_ERRORS])
    more = len(errors) - _SHOWN_ERRORS
    return f"{shown}; and {more} more" if more > 0 else shown


#: GIL switch interval while a reload compiles (Python's default is 5 ms).
RELOAD_SWITCH_INTERVAL_S = 0.0005


@contextlib.contextmanager
def _gentle() -> Iterator[None]:
    """Keep a reload (a thread) from stalling the event loop: compiling holds the GIL, so
    (1) the loop gets it back within 0.5 ms instead of 5 ms, and (2) the cyclic garbage
    collector waits until the compile is done: the many objects it allocates would otherwise
    trigger full collections of the whole heap, 30-200 ms each with a large rules file
    (bench/rules.py --reload-latency measures both). (3) After a successful compile the heap is
    frozen (`gc.freeze`): the new rule set is long-lived and holds no reference cycles (a
    replaced one is freed by reference counting, frozen or not), so no later collection walks
    it; otherwise the first collection after the reload walks every object it allocated, on
    whichever thread allocates next, often the event loop's. Reloads are serialised by
    LiveRules' lock, so nothing else changes these process-wide settings meanwhile."""
    interval, collecting = sys.getswitchinterval(), gc.isenabled()
    sys.setswitchinterval(RELOAD_SWITCH_INTERVAL_S)
    gc.disable()
    try:
        yield
        gc.freeze()
    finally:
        sys.setswitchinterval(interval)
        if collecting:
            gc.enable()


class LiveRules:
    """Holds the rule set the server routes with; `.ruleset` is read lock-free by the worker."""

    def __init__(
        self,
        folder: Path,
        *,
        windows: Mapping[str, str] | None = None,
        default_timezone: str = "UTC",
        forwards: Collection[str] | None = None,
        metrics: Metrics | None = None,
        poll_seconds: float = POLL_SECONDS,
    ) -> None:
        self.folder = folder
        #: Interval of `poll` (config `rules.poll_seconds`); 0: no poll, only watcher and SIGHUP.
        self.poll_seconds = poll_seconds
        self._forwards = None if forwards is None else frozenset(forwards)
        self._windows = dict(windows or {})
        self._default_timezone = default_timezone
        self._metrics = metrics
        self._live = _Live(None, None)
        self._lock = threading.Lock()
        self._pending: set[asyncio.Task[Any]] = set()
        self._stopped = False
        self._interrupt: asyncio.Event | None = None
        self._watching: tuple[Path, bool] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._poller: asyncio.Task[None] | None = None
        #: The on-disk version the last reload read (valid or not), for `poll`.
        self._seen: str | None = None
        #: Why the watcher failed last, until it watches again.
        self._watch_error: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings, metrics: Metrics | None = None) -> LiveRules:
        """The live rules as `serve` and `worker` run them: `[rules]`, `[windows]`, the
        compliance time zone and the forward names of the config."""
        return cls(
            Path(settings.rules.path),
            windows=settings.windows,
            default_timezone=settings.compliance.default_timezone,
            forwards=settings.channels.http.forwards.keys(),
            metrics=metrics,
            poll_seconds=settings.rules.poll_seconds,
        )

    @property
    def ruleset(self) -> RuleSet | None:
        """The live rule set; None only when no valid version was ever loaded."""
        return self._live.ruleset

    @property
    def version(self) -> str | None:
        """The live rules version (what /readyz reports)."""
        ruleset = self._live.ruleset
        return ruleset.version if ruleset is not None else None

    @property
    def error(self) -> str | None:
        """Why the files on disk are not live (or may not be followed), or None."""
        found = [error for error in (self._live.error, self._watch_error) if error]
        return "; ".join(found) or None

    @property
    def errors(self) -> tuple[RuleError, ...]:
        """The located errors of the last failed reload (empty for a missing folder)."""
        return self._live.errors

    def reload(self) -> bool:
        """Load the folder; make it live if valid. True when the live version changed."""
        with self._lock:
            return self._reload_locked()

    def first_load(self) -> list[str]:
        """Load at start-up; the located errors (`file:line:col: message`), empty when live."""
        self.reload()
        if self.ruleset is not None:
            return []
        located = [f"{self.folder / e.file}:{e.line}:{e.column}: {e.message}" for e in self.errors]
        return located or [self.error or "no rules loaded"]

    def _reload_locked(self) -> bool:
        previous = self._live.ruleset
        kept = previous.version if previous is not None else None
        try:
            return self._load(previous, kept)
        except Exception as exc:  # never let a reload crash the watcher or the start-up
            message = f"rules could not be loaded: {type(exc).__name__}: {exc}"
            _log.error("rules.invalid", error=message, live_version=kept)
            return self._fail(_Live(previous, message))

    def _load(self, previous: RuleSet | None, kept: str | None) -> bool:
        self._seen = self._on_disk()
        if not self.folder.is_dir():
            message = f"rules folder {self.folder} does not exist"
            _log.warning("rules.invalid", error=message, live_version=kept)
            return self._fail(_Live(previous, message))
        try:
            with _gentle():
                ruleset = load_ruleset(
                    self.folder,
                    windows=self._windows,
                    default_timezone=self._default_timezone,
                    forwards=self._forwards,
                )
        except RulesInvalid as exc:
            for item in exc.errors:
                _log.warning(
                    "rules.invalid",
                    file=item.file,
                    line=item.line,
                    column=item.column,
                    error=item.message,
                    live_version=kept,
                )
            return self._fail(_Live(previous, describe_errors(exc.errors), tuple(exc.errors)))
        except OSError as exc:
            message = f"cannot read rules folder {self.folder}: {exc.strerror or exc}"
            _log.warning("rules.invalid", error=message, live_version=kept)
            return self._fail(_Live(previous, message))
        self._live = _Live(ruleset, None)
        self._count("ok", valid=True)
        if kept != ruleset.version:
            _log.info(
                "rules.live",
                version=ruleset.version,
                previous_version=kept,
                rules=len(ruleset.rules),
                files=len(ruleset.files),
            )
        return kept != ruleset.version

    def _fail(self, live: _Live) -> bool:
        self._live = live
        self._count("invalid", valid=False)
        return False

    def _count(self, outcome: str, *, valid: bool) -> None:
        if self._metrics is not None:
            self._metrics.rules_reload.labels(outcome=outcome).inc()
            self._metrics.rules_valid.set(1 if valid and self._watch_error is None else 0)

    def _watch_failed(self, exc: BaseException) -> None:
        """The watcher stopped: say so on /readyz and in the metrics until it watches again."""
        self._watch_error = (
            f"watching rules folder {self.folder} failed: {exc or type(exc).__name__}"
        )
        _log.warning("rules.watch_error", error=self._watch_error)
        self._count("watch_error", valid=False)

    def _watching_again(self) -> None:
        if self._watch_error is not None:
            self._watch_error = None
            _log.info("rules.watching", folder=str(self.folder))
            if self._metrics is not None:
                self._metrics.rules_valid.set(1 if self._live.error is None else 0)

    async def reload_async(self) -> bool:
        """`reload` off the event loop (reading and compiling files is blocking work)."""
        return await asyncio.to_thread(self.reload)

    def _on_disk(self) -> str | None:
        """The version of the files on disk now; None while the folder is missing."""
        try:
            return rules_version(self.folder) if self.folder.is_dir() else None
        except OSError:
            return None

    async def poll(self) -> None:
        """Safety net under the watcher: reload whenever the files on disk differ from what
        the last reload read. A watcher can miss a change (made while it re-targets after a
        symlink swap, or on a file system without change events); this catches it within
        `poll_seconds`."""
        while not self._stopped:
            await asyncio.sleep(self.poll_seconds)
            if await asyncio.to_thread(self._on_disk) != self._seen:
                await self.reload_async()

    async def start(self) -> None:
        """Load the folder, then follow its changes and SIGHUP (app start-up).

        Raises RulesUnavailable when no valid version is live (nothing to route with).
        """
        await self.reload_async()
        if self.ruleset is None:
            raise RulesUnavailable("; ".join(str(e) for e in self.errors) or str(self.error))
        self._watcher = asyncio.create_task(self.watch(), name="rules-watcher")
        if self.poll_seconds > 0:
            self._poller = asyncio.create_task(self.poll(), name="rules-poller")
        if not self.install_sighup():
            _log.debug("rules.sighup_unavailable")  # not the main thread (tests, embedding)

    async def stop(self) -> None:
        """Stop watching and listening for SIGHUP (app shutdown)."""
        self.remove_sighup()
        self.stop_watching()
        if self._poller is not None:
            self._poller.cancel()
            self._poller = None
        if self._watcher is not None:
            try:
                await asyncio.wait_for(self._watcher, timeout=5)
            except TimeoutError:
                _log.warning("rules.watcher_stuck")
            self._watcher = None

    async def watch(self) -> None:
        """Reload on every change of a rules file until `stop_watching` (debounced)."""
        first = True
        while not self._stopped:
            if not first:
                await self.reload_async()  # catch up on changes made while not watching
            first = False
            self._interrupt = asyncio.Event()
            try:
                await self._watch_once(self._interrupt)
            except Exception as exc:  # the watcher itself failed: report it, retry in a second
                self._watch_failed(exc)
                await wait_event(self._interrupt, 1.0)

    def stop_watching(self) -> None:
        """End `watch` (at shutdown)."""
        self._stopped = True
        if self._interrupt is not None:
            self._interrupt.set()

    async def _watch_once(self, interrupt: asyncio.Event) -> None:
        """Watch until interrupted, or until the folder appears, vanishes or is re-pointed."""
        from watchfiles import awatch

        self._watching = target = self._watch_target()
        async for changes in awatch(
            target[0],
            watch_filter=self._relevant,
            debounce=500,
            step=100,
            stop_event=interrupt,
            recursive=target[1],
            rust_timeout=WATCH_HEARTBEAT_MS,
            yield_on_timeout=True,
        ):
            self._watching_again()  # an empty batch is the heartbeat: the watcher works
            if not changes:
                continue
            _log.debug("rules.changed", files=len(changes))
            await self.reload_async()
            if self._watch_target() != target:
                return

    def _watch_target(self) -> tuple[Path, bool]:
        """The real folder (symlinks resolved), or while it is missing its nearest parent."""
        if self.folder.is_dir():
            return self.folder.resolve(), True
        parent = self.folder.absolute().parent
        while not parent.is_dir() and parent != parent.parent:
            parent = parent.parent
        return parent.resolve(), False

    def _relevant(self, _change: Any, path: str) -> bool:
        changed = Path(path)
        if changed.suffix in _RULE_SUFFIXES:
            return True
        # While the folder is missing, its own creation is the change we wait for.
        return changed == self.folder.absolute() or changed == self.folder.resolve()

    def install_sighup(self) -> bool:
        """Reload on SIGHUP; possible only in the main thread of a Unix process."""
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        except (ValueError, RuntimeError, NotImplementedError, AttributeError):
            return False
        return True

    def remove_sighup(self) -> None:
        """Undo `install_sighup` (harmless if it was not installed)."""
        with contextlib.suppress(ValueError, RuntimeError, NotImplementedError, AttributeError):
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)

    def _on_sighup(self) -> None:
        _log.info("rules.sighup")
        task = asyncio.get_running_loop().create_task(self._reload_and_rewatch())
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _reload_and_rewatch(self) -> None:
        """SIGHUP after a deploy may have re-pointed a `rules` symlink: follow it."""
        await self.reload_async()
        if self._interrupt is not None and self._watch_target() != self._watching:
            self._interrupt.set()

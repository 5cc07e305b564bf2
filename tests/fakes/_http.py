"""A loopback HTTP/1.1 server in its own thread, with scriptable faults: the base of the fakes.

Each fake (`twilio_api.FakeTwilio`, `slack_api.FakeSlack`, `webhook_receiver.WebhookReceiver`)
is a `FakeHTTPService`: it names each request's operation and key (`route`) and performs it
(`handle`, called under the fake's lock); this module answers, or fails the way a provider's
edge fails (`../shared/notes/outbound-providers.md`):

- `respond(...)`: an error answer; the provider did not act (nothing is recorded);
- `timeout(delay)`: no answer for `delay` seconds (beyond the client's timeout), then the
  connection closes; nothing recorded;
- `reset()`: the connection is reset (RST) without an answer; nothing recorded;
- `accept_then_drop(delay)`: the request is performed and recorded, then, after `delay`,
  the connection is reset without an answer: the in-doubt case;
- `accept_then_fail(code)`: performed and answered as a success, the provider's later
  failure (`code`) is the fake's to apply (Twilio's 63016).

Faults are picked per request, in this order: per key (`fail_for`: a recipient, a channel, a
path), the next N calls (`fail_next`), then at random (`fail_randomly`, seeded). Each is
scoped to an operation (`op`, the fake's `default_op` unless given; `"*"` is every one).

The server is a plain asyncio server in a daemon thread on 127.0.0.1, port chosen by the OS.
State is guarded by one lock, so sync tests, async tests and the server thread share it;
`wait_until` blocks on a condition, `wait_until_async` polls without blocking a loop.
"""

from __future__ import annotations

import abc
import asyncio
import concurrent.futures
import contextlib
import json
import random
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from email.utils import formatdate
from http import HTTPStatus
from types import TracebackType
from typing import Any, Literal, Self, TypeVar
from urllib.parse import parse_qs, urlsplit

T = TypeVar("T")

FaultKind = Literal["respond", "timeout", "reset", "accept_then_drop", "accept_then_fail"]
ACCEPTING_KINDS: frozenset[str] = frozenset({"accept_then_drop", "accept_then_fail"})
ANY_OP = "*"
DEFAULT_HANG = 60.0


@dataclass(frozen=True)
class Request:
    method: str
    target: str
    headers: Mapping[str, str]  # lower-case names
    body: bytes

    @property
    def path(self) -> str:
        return urlsplit(self.target).path

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(urlsplit(self.target).query, keep_blank_values=True)

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";")[0].strip().lower()

    def form(self) -> dict[str, list[str]]:
        if self.content_type != "application/x-www-form-urlencoded":
            return {}
        return parse_qs(self.body.decode("utf-8", "replace"), keep_blank_values=True)

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def json(cls, status: int, payload: Any, headers: Iterable[tuple[str, str]] = ()) -> Response:
        body = json.dumps(payload).encode()
        return cls(status, body, (("Content-Type", "application/json; charset=utf-8"), *headers))


@dataclass(frozen=True)
class Drop:
    """Close the connection without an answer; `reset` sends an RST rather than a FIN."""

    reset: bool = True


@dataclass(frozen=True)
class Fault:
    kind: FaultKind
    response: Response | None = None
    delay: float = 0.0
    code: int | None = None
    label: str = ""

    def __post_init__(self) -> None:
        if self.kind == "respond" and self.response is None:
            raise ValueError("a 'respond' fault needs a response")


def respond(response: Response, label: str = "") -> Fault:
    return Fault("respond", response=response, label=label or str(response.status))


def timeout(delay: float = DEFAULT_HANG) -> Fault:
    """No answer for `delay` s, then a close: set `delay` beyond the client's timeout."""
    return Fault("timeout", delay=delay, label="timeout")


def reset() -> Fault:
    return Fault("reset", label="reset")


def accept_then_drop(delay: float = 0.0) -> Fault:
    """Performed and recorded, then the connection is reset after `delay` s: in doubt."""
    return Fault("accept_then_drop", delay=delay, label="accept_then_drop")


@dataclass
class _Rule:
    fault: Fault
    remaining: int | None  # None: every matching call
    op: str

    def matches(self, op: str) -> bool:
        return self.op in (ANY_OP, op)


@dataclass(frozen=True)
class AppliedFault:
    op: str
    key: str | None
    label: str
    at: float = field(default_factory=time.monotonic)


class FaultScript:
    """Scripted failures: per key, next N calls, or at random. Thread-safe."""

    def __init__(self, default_op: str) -> None:
        self.default_op = default_op
        self._lock = threading.Lock()
        self._next: list[_Rule] = []
        self._per_key: dict[str, list[_Rule]] = {}
        self._random: tuple[float, tuple[Fault, ...], random.Random, str] | None = None

    def fail_next(self, n: int, fault: Fault, *, op: str | None = None) -> None:
        with self._lock:
            self._next.append(_Rule(fault, n, op or self.default_op))

    def fail_for(
        self, key: str, fault: Fault, *, times: int | None = None, op: str | None = None
    ) -> None:
        with self._lock:
            self._per_key.setdefault(key, []).append(_Rule(fault, times, op or self.default_op))

    def fail_always(self, fault: Fault, *, op: str | None = None) -> None:
        """An outage: every matching call fails until `clear()`."""
        with self._lock:
            self._next.append(_Rule(fault, None, op or self.default_op))

    def fail_randomly(
        self, rate: float, faults: Sequence[Fault], *, seed: int = 0, op: str | None = None
    ) -> None:
        if not 0.0 <= rate <= 1.0 or not faults:
            raise ValueError("rate must be in [0, 1] and faults non-empty")
        with self._lock:
            self._random = (rate, tuple(faults), random.Random(seed), op or self.default_op)

    def clear(self) -> None:
        with self._lock:
            self._next.clear()
            self._per_key.clear()
            self._random = None

    def pick(self, op: str, key: str | None) -> Fault | None:
        with self._lock:
            rules = self._per_key.get(key, []) if key is not None else []
            fault = _take(rules, op) or _take(self._next, op)
            if fault is None and self._random is not None:
                rate, faults, rng, scope = self._random
                if scope in (ANY_OP, op) and rng.random() < rate:
                    fault = rng.choice(faults)
            return fault


def _take(rules: list[_Rule], op: str) -> Fault | None:
    for i, rule in enumerate(rules):
        if rule.matches(op):
            if rule.remaining is not None:
                rule.remaining -= 1
                if rule.remaining <= 0:
                    del rules[i]
            return rule.fault
    return None


Handler = Callable[[Request], Awaitable[Response | Drop]]


class LoopbackHTTPServer:
    """HTTP/1.1 with keep-alive on 127.0.0.1 in its own event-loop thread."""

    def __init__(
        self, handler: Handler, name: str = "fake-http", errors: list[str] | None = None
    ) -> None:
        self._handler = handler
        self.errors = errors if errors is not None else []  # what broke a connection
        self._name = name
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[Any]] = set()
        self.port = 0

    def start(self) -> None:
        self._thread.start()
        self._server = self.run(self._listen()).result(timeout=10)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _listen(self) -> asyncio.Server:
        return await asyncio.start_server(self._serve, "127.0.0.1", 0)

    def run(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        with contextlib.suppress(concurrent.futures.TimeoutError):
            self.run(self._shutdown()).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        current = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request = await _read_request(reader, writer)
                if request is None:
                    return
                outcome = await self._handler(request)
                if isinstance(outcome, Drop):
                    _drop(writer, outcome.reset)
                    return
                keep_alive = request.headers.get("connection", "").lower() != "close"
                writer.write(_encode(outcome, keep_alive))
                await writer.drain()
                if not keep_alive:
                    return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            return
        except Exception as exc:  # an unreadable request or a bug in a fake: keep it visible
            self.errors.append(repr(exc))
            return
        finally:
            if not writer.is_closing():
                writer.close()


async def _read_request(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> Request | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, target, _version = lines[0].split(" ", 2)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    if headers.get("expect", "").lower() == "100-continue":
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                break
            body += chunk[:-2]
    else:
        body = await reader.readexactly(int(headers.get("content-length") or 0))
    return Request(method.upper(), target, headers, body)


def _encode(response: Response, keep_alive: bool) -> bytes:
    try:
        reason = HTTPStatus(response.status).phrase
    except ValueError:
        reason = "Status"
    lines = [f"HTTP/1.1 {response.status} {reason}"]
    names = {name.lower() for name, _ in response.headers}
    lines += [f"{name}: {value}" for name, value in response.headers]
    if "content-type" not in names and response.body:
        lines.append("Content-Type: text/plain; charset=utf-8")
    lines.append(f"Content-Length: {len(response.body)}")
    lines.append(f"Date: {formatdate(usegmt=True)}")
    lines.append("Connection: " + ("keep-alive" if keep_alive else "close"))
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + response.body


def _drop(writer: asyncio.StreamWriter, rst: bool) -> None:
    sock = writer.get_extra_info("socket")
    if rst and sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class FakeHTTPService(abc.ABC):
    """A fake provider API: routing, the lock, faults, `slow`, counters and start/stop.

    Knobs: `slow` (seconds before answering), `slow_accept_first` (True: the request is
    performed, then the answer waits, so a crash in between leaves it in doubt; False: the
    wait comes first). Counters: `calls[op]` (every request, failed or not), `applied`
    (the faults used, in order), `errors` (requests the fake could not handle: a 500), and
    `in_flight` / `peak_in_flight` (requests being answered now / at most at once).
    """

    default_op: str = ANY_OP

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._changed = threading.Condition(self.lock)
        self.faults = FaultScript(self.default_op)
        self.slow = 0.0
        self.slow_accept_first = True
        #: Up to this many seconds more than `slow`, at random (seeded): a provider that stalls.
        self.slow_jitter = 0.0
        self._stalls = random.Random(0)
        self.calls: Counter[str] = Counter()
        self.applied: list[AppliedFault] = []
        self.errors: list[str] = []  # requests the fake itself failed on (500)
        self.in_flight = 0
        self.peak_in_flight = 0
        #: Requests being answered now, by operation (`create`, `list`, ...).
        self.in_flight_ops: Counter[str] = Counter()
        self._server = LoopbackHTTPServer(self._dispatch, type(self).__name__, self.errors)

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> Self:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self._server.port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.port}"

    def run(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Run `coro` on the fake's loop; `.result()` from sync code, `asyncio.wrap_future` else."""
        return self._server.run(coro)

    # -- scripting (see FaultScript) --------------------------------------------------------
    def fail_next(self, n: int, fault: Fault, *, op: str | None = None) -> None:
        self.faults.fail_next(n, fault, op=op)

    def fail_for(
        self, key: str, fault: Fault, *, times: int | None = None, op: str | None = None
    ) -> None:
        self.faults.fail_for(key, fault, times=times, op=op)

    def fail_always(self, fault: Fault, *, op: str | None = None) -> None:
        self.faults.fail_always(fault, op=op)

    def fail_randomly(
        self, rate: float, faults: Sequence[Fault], *, seed: int = 0, op: str | None = None
    ) -> None:
        self.faults.fail_randomly(rate, faults, seed=seed, op=op)

    def clear_faults(self) -> None:
        self.faults.clear()

    # -- waiting ----------------------------------------------------------------------------
    def wait_until(self, predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
        """Block (not in an event loop running the client!) until `predicate()` holds."""
        with self._changed:
            return self._changed.wait_for(predicate, timeout=timeout)

    async def wait_until_async(self, predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                if predicate():
                    return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.005)

    # -- the provider -----------------------------------------------------------------------
    @abc.abstractmethod
    def route(self, request: Request) -> tuple[str, str | None]:
        """The request's operation name and fault key (recipient, channel, path...)."""

    @abc.abstractmethod
    def handle(self, request: Request, op: str, fault: Fault | None) -> Response:
        """Perform the request (called with `self.lock` held, on the server thread)."""

    async def _dispatch(self, request: Request) -> Response | Drop:
        with self.lock:
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            return await self._answer(request)
        finally:
            with self.lock:
                self.in_flight -= 1

    async def _answer(self, request: Request) -> Response | Drop:
        try:
            op, key = self.route(request)
        except Exception:
            op, key = "unreadable", None
        fault = self.faults.pick(op, key)
        with self.lock:
            self.in_flight_ops[op] += 1
        try:
            return await self._perform(request, op, key, fault)
        finally:
            with self.lock:
                self.in_flight_ops[op] -= 1

    async def _perform(
        self, request: Request, op: str, key: str | None, fault: Fault | None
    ) -> Response | Drop:
        with self.lock:
            self.calls[op] += 1
            if fault is not None:
                self.applied.append(AppliedFault(op, key, fault.label or fault.kind))
            self._changed.notify_all()
        if fault is not None and fault.kind not in ACCEPTING_KINDS:
            if fault.kind == "reset":
                return Drop(reset=True)
            if fault.kind == "timeout":
                await asyncio.sleep(fault.delay)
                return Drop(reset=False)
            await self._slow(before_accept=True)
            await self._slow(before_accept=False)
            assert fault.response is not None
            return fault.response
        await self._slow(before_accept=True)
        with self.lock:
            try:
                response = self.handle(request, op, fault)
            except Exception as exc:  # a bug in the fake, or a request it can't read
                self.errors.append(f"{request.method} {request.target}: {exc!r}")
                response = Response(500, f"fake error: {exc!r}".encode())
            self._changed.notify_all()
        if fault is not None and fault.kind == "accept_then_drop":
            await asyncio.sleep(fault.delay)
            return Drop(reset=True)
        await self._slow(before_accept=False)
        return response

    async def _slow(self, *, before_accept: bool) -> None:
        if (self.slow > 0 or self.slow_jitter > 0) and before_accept != self.slow_accept_first:
            await asyncio.sleep(self.slow + self._stalls.uniform(0, self.slow_jitter))


def first(values: Mapping[str, list[str]], name: str) -> str | None:
    found = values.get(name)
    return found[0] if found else None

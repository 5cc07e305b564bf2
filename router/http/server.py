"""The HTTP server side of `serve`: uvicorn with httptools, plus the limits httptools lacks.

uvicorn's httptools protocol bounds neither the size of a request's headers nor the time they
take to arrive, and it only times out a connection that is idle *after* a response: a client
could hold a connection forever by sending a byte a second, or make the parser buffer a 32 MiB
header. h11 has a size limit but is much slower, and ingest speed matters, so
`LimitedHttpToolsProtocol` adds to httptools, per connection:

- a header budget (`server.max_header_bytes`, counted on the bytes read while a request's
  headers are incomplete, before the parser sees them): past it, 431;
- a header deadline (`server.header_timeout_seconds`), from connection open for the first
  request and from the first byte of each later one, until the headers are complete: 408;
- a body deadline (`server.body_timeout_seconds`), from the end of the headers until the body
  is complete: 408 (or a plain close once the app has answered);
- a cap on open connections (`server.max_connections`): one accepted beyond it is answered 503
  without its headers being parsed, and uvicorn's `limit_concurrency` answers 503 to requests
  beyond it on connections already open;
- `server.keepalive_seconds` for idle kept-alive connections (uvicorn's own timer).

Deadlines cost one `loop.time()` and an attribute store per request: each connection keeps a
single timer, which re-arms itself when it fires early (the deadline moved on) rather than being
cancelled and re-created on every request. Refusals are written by the protocol, with
`connection: close`; the connection then stops reading for the parser and drains what the client
still sends for a moment before closing, so that the answer is not lost to a TCP reset.

This subclass uses uvicorn internals (parser callbacks, `cycle`, `pipeline`, `flow`): the
version range is pinned in pyproject.toml and tests/router/test_http_server.py fails loudly if
they move.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import socket
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import msgspec
import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from router.config import ServerConfig
from router.logs import flush_logs, get_logger

if TYPE_CHECKING:
    from uvicorn.config import Config
    from uvicorn.server import ServerState

#: How `serve` runs uvicorn (bench/floor_app.py serves the framework floor the same way):
#: uvloop and httptools (uvicorn[standard]) rather than asyncio and h11, no access log.
#: `uvicorn_config` adds the protocol class with the limits of `[server]`.
UVICORN_OPTIONS: dict[str, Any] = {
    "loop": "uvloop",
    "http": "httptools",
    "log_level": "warning",
    "access_log": False,
    "server_header": False,
    "timeout_graceful_shutdown": 10,
}

#: How long a refused connection drains what the client still sends before it is closed.
LINGER_SECONDS = 2.0

_INF = float("inf")
_Base = HttpToolsProtocol  # its methods called directly: `super()` costs ~500 instructions a call
_log = get_logger("switchboard.http")


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """The connection limits of `[server]`, in the units the protocol uses."""

    max_header_bytes: int
    header_timeout: float
    body_timeout: float
    keepalive: int
    max_connections: int

    @classmethod
    def from_config(cls, server: ServerConfig) -> HttpLimits:
        """The limits configured in `[server]`."""
        return cls(
            max_header_bytes=server.max_header_bytes,
            header_timeout=server.header_timeout_seconds,
            body_timeout=server.body_timeout_seconds,
            keepalive=server.keepalive_seconds,
            max_connections=server.max_connections,
        )


def _refusal(status: int, default_headers: list[tuple[bytes, bytes]]) -> bytes:
    """A complete answer that closes the connection, in the app's `{"error"}` JSON shape."""
    phrase = http.HTTPStatus(status).phrase
    lines = [f"HTTP/1.1 {status} {phrase}\r\n".encode()]
    lines += [name + b": " + value + b"\r\n" for name, value in default_headers]
    body = msgspec.json.encode({"error": phrase})
    lines.append(b"content-type: application/json\r\n")
    lines.append(b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body))
    return b"".join(lines) + body


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with header size, header and body deadlines, and a
    connection cap. Bind limits with `protocol_class`; the class default is `[server]`'s."""

    limits: ClassVar[HttpLimits] = HttpLimits.from_config(ServerConfig())

    # Our state lives in slots, not in the instance dict: uvicorn already keeps 28 attributes
    # there, and past 30 CPython stops sharing the dict's keys and de-optimises every `self.x`
    # of uvicorn's own hot path (callgrind: ~4,000 instructions a request).
    __slots__ = (
        "_body_timeout",
        "_deadline",
        "_header_budget",
        "_header_timeout",
        "_in_headers",
        "_lingering",
        "_max_header_bytes",
        "_over_cap",
        "_time",
        "_timer",
    )

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        _Base.__init__(self, config, server_state, app_state, _loop)
        limits = self.limits
        self._max_header_bytes = limits.max_header_bytes
        self._header_timeout = limits.header_timeout
        self._body_timeout = limits.body_timeout
        self._time = self.loop.time
        #: True between requests and inside a request's headers: the bytes read count.
        self._in_headers = True
        #: Header bytes the current request may still send; below 0, `_past_budget` decides.
        self._header_budget = limits.max_header_bytes
        #: Loop time at which the current phase times out (inf: none, the app is working).
        self._deadline = _INF
        self._timer: asyncio.TimerHandle | None = None
        #: Refused: the answer is written, reads are dropped until close.
        self._lingering = False
        self._over_cap = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Start the header deadline now (a connection that sends nothing is closed too)."""
        _Base.connection_made(self, transport)
        self._over_cap = len(self.connections) > self.limits.max_connections
        if self._over_cap:
            self._header_budget = -1  # the first bytes go to `_past_budget`, which answers 503
        self._deadline = self._time() + self._header_timeout
        self._arm(self._deadline)

    def connection_lost(self, exc: Exception | None) -> None:
        """Drop the timer with the connection."""
        _Base.connection_lost(self, exc)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def data_received(self, data: bytes) -> None:
        """Count header bytes before the parser buffers them; refuse past the budget."""
        if self._in_headers:
            if self._deadline == _INF:  # first bytes of the next request on this connection
                self._deadline = self._time() + self._header_timeout
            budget = self._header_budget - len(data)
            self._header_budget = budget
            if budget < 0:  # also every read once refused (see `_linger`)
                self._past_budget(data)
                return
        _Base.data_received(self, data)

    def on_headers_complete(self) -> None:
        """Headers done: the body deadline starts."""
        self._in_headers = False
        self._deadline = self._time() + self._body_timeout
        _Base.on_headers_complete(self)

    def on_message_complete(self) -> None:
        """Body done: no deadline while the app works; the next request gets a fresh budget."""
        _Base.on_message_complete(self)
        self._in_headers = True
        self._header_budget = self._max_header_bytes
        self._deadline = _INF

    def handle_websocket_upgrade(self) -> None:
        """The connection now belongs to the websocket protocol: our deadlines end here."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        _Base.handle_websocket_upgrade(self)

    def _past_budget(self, data: bytes) -> None:
        """This read crosses the header budget: parse what fits, and refuse unless the
        headers were complete within it. Once refused, reads are dropped."""
        if self._lingering:
            return
        if self._over_cap:
            self._refuse(503)
            return
        fits = len(data) + self._header_budget  # the budget before this read
        if fits > 0:
            _Base.data_received(self, data[:fits])
        if self.transport.is_closing():  # the parser refused the request itself (400)
            return
        if self._in_headers:
            self._refuse(431)
        else:
            _Base.data_received(self, data[fits:])

    def _arm(self, when: float) -> None:
        self._timer = self.loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        """Fire at the deadline; if it moved on (or there is none), sleep until it or poll.

        Polling at the shortest timeout is enough: a deadline set later is at least that far
        away, so the timer wakes before it and re-arms on it exactly."""
        now = self._time()
        if now < self._deadline:
            poll = now + min(self._header_timeout, self._body_timeout)
            self._arm(min(self._deadline, poll))
            return
        self._timer = None
        self._expire()

    def _expire(self) -> None:
        """A deadline passed: 408, or a plain close when there is no request to answer."""
        if self._lingering or self._over_cap:
            self.transport.close()
        elif self._in_headers and self._header_budget == self._max_header_bytes:
            self.transport.close()  # no byte of a request: nothing to answer
        else:
            self._refuse(408)

    def _answerable(self) -> bool:
        """True if no earlier response on this connection is still owed (HTTP answers in
        order) and the current request has not been answered yet."""
        if self._in_headers:
            return self.cycle is None or self.cycle.response_complete
        return not self.pipeline and not self.cycle.response_started

    def _refuse(self, status: int) -> None:
        """Answer `status` and close; the app, if it runs this request, sees a disconnect.

        If the answer cannot go out in order (an earlier pipelined request is still being
        answered, or the app has begun answering this one), the connection is just closed."""
        _log.info("http.refused", status=status, client=self.client and self.client[0])
        if not self._answerable():
            self.transport.close()
            return
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True  # its receive() says http.disconnect, its send() is dropped
            cycle.message_event.set()
        self.transport.write(_refusal(status, self.server_state.default_headers))
        self._linger()

    def _linger(self) -> None:
        """Send FIN and drain reads for LINGER_SECONDS: closing with unread data would send
        an RST, and the client could lose the answer before reading it."""
        self._lingering = True
        self._in_headers, self._header_budget = True, -1  # every read goes to `_past_budget`
        self.flow.resume_reading()
        if not self.transport.can_write_eof():
            self.transport.close()
            return
        self.transport.write_eof()
        if self._timer is not None:
            self._timer.cancel()
        self._deadline = self._time() + LINGER_SECONDS
        self._arm(self._deadline)


def protocol_class(limits: HttpLimits) -> type[LimitedHttpToolsProtocol]:
    """`LimitedHttpToolsProtocol` bound to `limits` (uvicorn instantiates the class itself)."""
    return type("LimitedHttpToolsProtocol", (LimitedHttpToolsProtocol,), {"limits": limits})


def uvicorn_config(app: Any, server: ServerConfig, **overrides: Any) -> uvicorn.Config:
    """The one uvicorn config of every served app: `serve`, the tests' live server, the bench.

    `overrides` (host, port, log_level, ...) win over `server` and UVICORN_OPTIONS.
    """
    limits = HttpLimits.from_config(server)
    options: dict[str, Any] = {
        **UVICORN_OPTIONS,
        "host": server.host,
        "port": server.port,
        "http": protocol_class(limits),
        # uvicorn counts the connection asking too: +1 makes max_connections the number served.
        "limit_concurrency": limits.max_connections + 1,
        "timeout_keep_alive": limits.keepalive,
        **overrides,
    }
    return uvicorn.Config(app, **options)


def listening_url(sockname: Any) -> str:
    """`http://127.0.0.1:8080` for a bound socket's name (IPv6 hosts in brackets)."""
    host, port = sockname[0], sockname[1]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class AnnouncingServer(uvicorn.Server):
    """uvicorn's server, saying where it listens once bound: the operator (and a script that
    asked for port 0) learns the real address from the log, not from the config."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if not self.started:
            return
        for bound in self.servers:
            for sock in bound.sockets:
                url = listening_url(sock.getsockname())
                _log.info("http.listening", url=url, message=f"listening on {url}")
        flush_logs()  # at once: a supervisor or script may be waiting for this line


def run(app: Any, server: ServerConfig, **overrides: Any) -> None:
    """Serve `app` until SIGINT/SIGTERM, with the limits of `server`; exit as `uvicorn.run`
    does (0 after a signal, 3 when the server never started)."""
    runner = AnnouncingServer(uvicorn_config(app, server, **overrides))
    with contextlib.suppress(KeyboardInterrupt):  # uvicorn re-raises SIGINT once shut down
        runner.run()
    if not runner.started:
        sys.exit(STARTUP_FAILURE)

"""router.http.server leans on uvicorn internals: these tests fail loudly when they move.

If one fails after a uvicorn upgrade, re-read uvicorn/protocols/http/httptools_impl.py against
router/http/server.py (parser callbacks, `cycle`, `pipeline`, `flow`, the keep-alive timer),
fix what changed, run tests/integration/test_http_limits.py, then widen the pin in
pyproject.toml. The behaviour itself is tested against a live server in that file.
"""

from __future__ import annotations

import asyncio
import inspect
import re
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from uvicorn.protocols.http import httptools_impl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.server import ServerState

from router.config import ConfigError, ServerConfig, parse_settings
from router.http.server import HttpLimits, LimitedHttpToolsProtocol, protocol_class, uvicorn_config

ROOT = Path(__file__).resolve().parents[2]


def _uvicorn_requirement() -> Requirement:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    requirements = [Requirement(line) for line in project["project"]["dependencies"]]
    return next(r for r in requirements if r.name == "uvicorn")


def test_uvicorn_is_pinned_to_the_range_the_protocol_was_written_for() -> None:
    pin = _uvicorn_requirement().specifier
    assert any(spec.operator == "<" for spec in pin), "uvicorn needs an upper bound: see above"
    assert pin.contains(version("uvicorn")), f"uvicorn {version('uvicorn')} is outside {pin}"


def test_the_hooks_we_override_still_exist_with_the_same_signatures() -> None:
    for name in (
        "__init__",
        "connection_made",
        "connection_lost",
        "data_received",
        "on_headers_complete",
        "on_message_complete",
        "handle_websocket_upgrade",
    ):
        ours = inspect.signature(getattr(LimitedHttpToolsProtocol, name))
        theirs = inspect.signature(getattr(HttpToolsProtocol, name))
        assert list(ours.parameters) == list(theirs.parameters), name


@pytest.mark.parametrize(
    ("owner", "attributes"),
    [
        (
            HttpToolsProtocol,
            ["cycle", "pipeline", "flow", "connections", "server_state", "loop", "transport"],
        ),
        (
            RequestResponseCycle,
            ["disconnected", "message_event", "response_started", "response_complete"],
        ),
    ],
)
def test_the_state_we_read_is_still_kept_under_the_same_names(
    owner: type, attributes: list[str]
) -> None:
    source = inspect.getsource(owner)
    for attribute in attributes:
        assert re.search(rf"self\.{attribute}\b[^=\n]*= ", source), f"{owner.__name__}.{attribute}"


def test_uvicorn_still_only_times_out_idle_connections_after_a_response() -> None:
    """If uvicorn grows its own header or request timeouts, ours may be redundant or clash."""
    source = inspect.getsource(httptools_impl)
    assert source.count("call_later(") == 1
    assert "timeout_keep_alive_handler" in inspect.getsource(HttpToolsProtocol.on_response_complete)


def test_uvicorn_config_carries_the_limits_of_server() -> None:
    server = ServerConfig(max_header_bytes=2048, header_timeout_seconds=3, max_connections=7)
    config = uvicorn_config(object(), server, port=1234)
    config.load()
    assert issubclass(config.http_protocol_class, LimitedHttpToolsProtocol)
    limits = config.http_protocol_class.limits  # type: ignore[attr-defined]
    assert limits == HttpLimits.from_config(server)
    assert config.limit_concurrency == 8  # uvicorn counts the asking connection too
    assert config.timeout_keep_alive == server.keepalive_seconds
    assert (config.host, config.port, config.http, config.loop) == (
        server.host,
        1234,
        config.http_protocol_class,
        "uvloop",
    )


def test_protocol_classes_keep_their_own_limits() -> None:
    small = protocol_class(HttpLimits.from_config(ServerConfig(max_header_bytes=1024)))
    assert small.limits.max_header_bytes == 1024
    assert LimitedHttpToolsProtocol.limits == HttpLimits.from_config(ServerConfig())


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("max_header_bytes = 100", "server.max_header_bytes: Expected `int` >= 1024"),
        ("header_timeout_seconds = 0", "server.header_timeout_seconds: Expected `float` > 0.0"),
        ("body_timeout_seconds = -1", "server.body_timeout_seconds: Expected `float` > 0.0"),
        ("keepalive_seconds = 0.5", "server.keepalive_seconds: Expected `int`, got `float`"),
        ("max_connections = 0", "server.max_connections: Expected `int` >= 1"),
    ],
)
def test_limits_out_of_range_are_located_errors(line: str, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_settings(f'[server]\nhost = "127.0.0.1"\n{line}\n')
    assert str(error.value) == f"switchboard.toml:3: {message}"


def test_defaults() -> None:
    server = parse_settings("").server
    assert (
        server.max_header_bytes,
        server.header_timeout_seconds,
        server.body_timeout_seconds,
        server.keepalive_seconds,
        server.max_connections,
    ) == (32 * 1024, 10.0, 60.0, 5, 1000)


def test_the_protocol_state_stays_out_of_uvicorns_instance_dict() -> None:
    """uvicorn keeps ~28 attributes in the instance dict; past 30, CPython stops sharing its
    keys and every `self.x` on uvicorn's hot path gets slower (see __slots__)."""
    loop = asyncio.new_event_loop()
    try:
        config = uvicorn_config(object(), ServerConfig())
        config.load()
        protocol = config.http_protocol_class(  # type: ignore[call-arg]
            config=config, server_state=ServerState(), app_state={}, _loop=loop
        )
    finally:
        loop.close()
    assert not set(vars(protocol)) & set(LimitedHttpToolsProtocol.__slots__)
    assert len(vars(protocol)) <= 30, sorted(vars(protocol))

"""Shared test helpers: a config with known secrets, a live server on loopback, the CLI."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import uvicorn
from click.testing import CliRunner

from router.cli.main import cli
from router.config import ComplianceConfig, Settings, load_settings
from router.http.app import create_app
from router.http.server import uvicorn_config
from router.logs import configure_logging
from statemachines import quiet_hours

if TYPE_CHECKING:
    from router.clock import Clock
    from tests.cases.base import SignedRequest

#: Per source: the active secrets in config (index 0 = current, 1 = rotated-in), and a wrong one.
SECRETS: dict[str, list[str]] = {
    "twilio": ["twilio-token-current", "twilio-token-rotated"],
    "slack": ["slack-secret-current", "slack-secret-rotated"],
    "stripe": ["whsec_stripeCurrent", "whsec_stripeRotated"],
    "mailgun": ["mailgun-key-current", "mailgun-key-rotated"],
    "sendgrid": ["parse:sendgrid-current", "parse:sendgrid-rotated"],
    # Standard Webhooks secrets are base64 after the whsec_ prefix.
    "custom": ["whsec_Y3VzdG9tLWN1cnJlbnQtc2VjcmV0", "whsec_Y3VzdG9tLXJvdGF0ZWQtc2VjcmV0"],
}
WRONG_SECRETS: dict[str, str] = {
    "twilio": "twilio-token-wrong",
    "slack": "slack-secret-wrong",
    "stripe": "whsec_stripeWrong",
    "mailgun": "mailgun-key-wrong",
    "sendgrid": "parse:sendgrid-wrong",
    "custom": "whsec_d3JvbmctY3VzdG9tLXNlY3JldA==",
}
CUSTOM_SOURCE = "crm"
#: The URL providers are configured to call (a proxy in front); tests send to loopback.
PUBLIC_URL = "https://switchboard.example.com"
ADMIN_TOKEN = "test-admin-token"


def _toml_list(values: list[str]) -> str:
    return json.dumps(values)


def config_text(
    db_path: Path,
    *,
    port: int = 0,
    public_url: str = PUBLIC_URL,
    extra: str = "",
    max_body_bytes: int = 1_048_576,
    busy_timeout_ms: int = 2000,
    source_options: dict[str, str] | None = None,
    server_options: str = "",
    storage_url: str | None = None,
    storage_options: str = "",
) -> str:
    """A complete config with every source configured with two secrets each.

    `storage_url` replaces the SQLite file at `db_path` (a PostgreSQL database, say).

    `source_options` adds TOML lines to a source's table (key `twilio`, ..., `custom`), e.g.
    `{"twilio": 'accept_types = ["message.received"]'}`; `server_options` adds lines to
    `[server]` (e.g. `header_timeout_seconds = 0.5`), `storage_options` to `[storage]`;
    `extra` is appended at the end.
    """
    opts = source_options or {}
    return f"""
[server]
host = "127.0.0.1"
port = {port}
public_url = "{public_url}"
max_body_bytes = {max_body_bytes}
admin_token = "{ADMIN_TOKEN}"
{server_options}

[storage]
url = "{storage_url or f"sqlite:///{db_path}"}"
busy_timeout_ms = {busy_timeout_ms}
blob_threshold_bytes = 65536
{storage_options}

[sources.twilio]
auth_tokens = {_toml_list(SECRETS["twilio"])}
{opts.get("twilio", "")}

[sources.slack]
signing_secrets = {_toml_list(SECRETS["slack"])}
{opts.get("slack", "")}

[sources.stripe]
signing_secrets = {_toml_list(SECRETS["stripe"])}
{opts.get("stripe", "")}

[sources.mailgun]
signing_keys = {_toml_list(SECRETS["mailgun"])}
{opts.get("mailgun", "")}

[sources.sendgrid]
basic_auth = {_toml_list(SECRETS["sendgrid"])}
{opts.get("sendgrid", "")}

[sources.custom.{CUSTOM_SOURCE}]
secrets = {_toml_list(SECRETS["custom"])}
{opts.get("custom", "")}

# The starter rules (rules/) forward to `crm`; a destination on loopback nobody listens on.
[channels.http.forwards.crm]
url = "http://127.0.0.1:9/hooks/switchboard"

[logging]
level = "warning"
{extra}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for(condition: Callable[[], bool], timeout: float = 10.0, interval: float = 0.01) -> None:
    """Poll `condition` until true or fail after `timeout` seconds (no bare sleeps in tests)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


@dataclass
class LiveServer:
    """A Switchboard app served by uvicorn on loopback, in a thread of the test process."""

    base_url: str
    config_path: Path
    settings: Settings
    extra: dict[str, Any] = field(default_factory=dict)

    def cli(self, *args: str) -> CliResult:
        return run_cli(self.config_path, *args)

    def post(self, request: SignedRequest, **overrides: Any) -> httpx.Response:
        """POST a prepared webhook; `content=`/`headers=` replace the request's own."""
        return httpx.post(
            self.base_url + request.path,
            content=overrides.pop("content", request.body),
            headers=overrides.pop("headers", request.headers),
            auth=overrides.pop("auth", request.auth),
            timeout=overrides.pop("timeout", 30),
            **overrides,
        )

    def events(self, *filters: str) -> list[dict[str, Any]]:
        """`switchboard events list --json` (up to 10,000), as a user reads the store."""
        result = self.cli("events", "list", "--json", "--limit", "10000", *filters)
        assert result.exit_code == 0, result.stderr
        events: list[dict[str, Any]] = result.json()
        return events


@contextmanager
def live_server(
    tmp_path: Path,
    *,
    clock: Clock | None = None,
    quiet: bool = True,
    routing: bool = False,
    **config: Any,
) -> Iterator[LiveServer]:
    """Start the real app on a free loopback port; stop it on exit.

    `routing`: run the worker and the dispatcher in it; without, stored events stay as
    ingested (what tests of ingest read). `quiet`: logs at the configured level (warning), as
    `serve` would; False leaves logging as the test set it up."""
    if not routing:
        config["extra"] = config.get("extra", "") + "\n[worker]\nin_serve = false\n"
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    config_path = tmp_path / "switchboard.toml"
    config_path.write_text(config_text(tmp_path / "var" / "switchboard.db", port=port, **config))
    settings = load_settings(config_path)
    # As `serve` does: the configured level. The server's background tasks (worker,
    # dispatcher) log while the test runs CLI commands in this process, whose stdout is JSON.
    if quiet:
        configure_logging(settings.logging.level, debug=settings.logging.debug)
    # The config `serve` uses, so the connection limits of [server] apply here too.
    server = uvicorn.Server(uvicorn_config(create_app(settings, clock=clock), settings.server))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started or not thread.is_alive())
    assert server.started, "server did not start"
    try:
        yield LiveServer(base_url=base_url, config_path=config_path, settings=settings)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        if quiet:
            configure_logging("info")


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


def run_cli(config_path: Path, *args: str) -> CliResult:
    """Run `switchboard --config CONFIG ARGS...` in-process; stdout and stderr kept apart."""
    result = CliRunner().invoke(
        cli, ["--config", str(config_path), *args], prog_name="switchboard", catch_exceptions=False
    )
    return CliResult(result.exit_code, result.stdout, result.stderr)


ROOT = Path(__file__).resolve().parents[1]


@dataclass
class ServerProcess:
    """`switchboard serve` in a process of its own (for kills, and for load that must not
    share the test process's GIL)."""

    process: subprocess.Popen[bytes]
    base_url: str
    config_path: Path
    db_path: Path

    def post(self, request: SignedRequest, **options: Any) -> httpx.Response:
        """POST a prepared webhook (httpx options such as `timeout=` pass through)."""
        return httpx.post(
            self.base_url + request.path,
            content=request.body,
            headers=request.headers,
            auth=request.auth,
            **{"timeout": 30, **options},
        )

    def events(self, *filters: str) -> list[dict[str, Any]]:
        result = run_cli(self.config_path, "events", "list", "--json", "--limit", "10000", *filters)
        assert result.exit_code == 0, result.stderr
        events: list[dict[str, Any]] = result.json()
        return events


def spawn_serve(
    config_path: Path, stdout: Any, *, stderr: Any = subprocess.STDOUT, cwd: Path = ROOT
) -> subprocess.Popen[bytes]:
    """`python -m router --config CONFIG serve` as a process of its own (output to `stdout`,
    stderr with it unless told otherwise)."""
    return subprocess.Popen(
        [sys.executable, "-m", "router", "--config", str(config_path), "serve"],
        cwd=cwd,
        stdout=stdout,
        stderr=stderr,
    )


def _process_ready(base_url: str, process: subprocess.Popen[bytes]) -> bool:
    if process.poll() is not None:
        raise AssertionError(f"server exited with {process.returncode}")
    try:
        return httpx.get(base_url + "/readyz", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


@contextmanager
def server_process(
    tmp_path: Path, *, port: int | None = None, log_name: str | None = "server.log", **config: Any
) -> Iterator[ServerProcess]:
    """`python -m router --config ... serve` on `port` (default: a free one), with
    `config_text(**config)`; killed, if still alive, on exit. Its output goes to `log_name`
    in `tmp_path`, or nowhere if None."""
    port = port or free_port()
    db_path = tmp_path / "var" / "switchboard.db"
    config_path = tmp_path / "switchboard.toml"
    config_path.write_text(config_text(db_path, port=port, **config))
    base_url = f"http://127.0.0.1:{port}"
    log_path = tmp_path / log_name if log_name else Path(os.devnull)
    with log_path.open("wb") as log:
        process = spawn_serve(config_path, log)
    try:
        wait_for(lambda: _process_ready(base_url, process), timeout=15, interval=0.05)
        yield ServerProcess(process, base_url, config_path, db_path)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)


def open_quiet_hours(numbers: list[str], minutes: int = 10) -> str:
    """A `compliance.quiet_hours` window (zone UTC, no state windows) that holds no marketing
    row to `numbers` from now for `minutes`: SPEC §7 has no switch to turn quiet hours off,
    and the rows under test must not be deferred whatever the time of day."""
    now = datetime.now(UTC)
    for hour in range(24):
        window = f"{hour:02d}:00-{hour:02d}:30"
        config = ComplianceConfig(quiet_hours=window, default_timezone="UTC", state_windows=False)
        if all(
            quiet_hours.not_before(now + timedelta(minutes=m), "marketing", None, n, config) is None
            for n in numbers
            for m in (0, minutes)
        ):
            return window
    raise AssertionError("no quiet-hours window leaves now open")

"""`switchboard status [--json]` and `GET /api/status` (SPEC §12) against a store with known
contents (tests/router/status_scene.py), read as at a known moment; the server is asked at
its `/readyz`, for real, whether it runs or not."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from router.clock import FrozenClock
from tests.postgres import run_blocking
from tests.router.status_scene import ALERTS, EXPECTED, NOW, build_scene
from tests.router.test_store import backend, open_backend  # noqa: F401  (fixtures)
from tests.support import ADMIN_TOKEN, config_text, free_port, live_server, run_cli

AT = ("--at", NOW.isoformat())


def _scene(kind: str, tmp_path: Path) -> None:
    async def build() -> None:
        async with open_backend(kind, tmp_path) as store:
            await build_scene(store)

    run_blocking(build)


def _config(tmp_path: Path, kind: str, port: int) -> Path:
    storage = None
    if kind == "postgres":
        from tests.postgres import SERVER

        storage = SERVER.url
    path = tmp_path / "switchboard.toml"
    path.write_text(
        config_text(tmp_path / "var" / "switchboard.db", port=port, storage_url=storage)
    )
    return path


def _people(alerts: list[str]) -> list[str]:
    """The alerts this machine's own disk cannot decide (a test box may be nearly full)."""
    return [alert for alert in alerts if not alert.startswith("disk almost full")]


def test_json_of_a_known_store_with_no_server(backend: str, tmp_path: Path) -> None:  # noqa: F811
    _scene(backend, tmp_path)
    port = free_port()  # nothing listens there
    result = run_cli(_config(tmp_path, backend, port), "status", "--json", *AT)
    assert result.exit_code == 1, result.stderr
    status = result.json()
    url = f"http://127.0.0.1:{port}"
    assert status["server"] == {
        "url": url,
        "ready": False,
        "rules_version": None,
        "rules_error": None,
    }
    assert {key: status[key] for key in EXPECTED} == EXPECTED
    storage = status["storage"]
    assert storage["bytes"] > 0 and storage["blobs_bytes"] >= 0
    assert (storage["disk_free_bytes"] is None) == (backend == "postgres")
    # The server first, then the rest, as ALERTS orders them; the store is read all the same.
    assert _people(status["alerts"]) == [
        f"server down: nothing answers at {url} (ConnectError)",
        *ALERTS,
    ]


def test_people_read_the_alerts_first(tmp_path: Path) -> None:
    _scene("sqlite", tmp_path)
    result = run_cli(_config(tmp_path, "sqlite", free_port()), "status", *AT)
    assert result.exit_code == 1, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].endswith("need a person:")
    alerts = [line.strip().removeprefix("! ") for line in lines if line.startswith("  ! ")]
    assert _people(alerts)[1:] == ALERTS
    first_row = next(i for i, line in enumerate(lines) if line.startswith("events "))
    assert first_row > max(i for i, line in enumerate(lines) if line.startswith("  ! "))
    assert "waiting 2 (oldest 5m)  failed 1" in lines[first_row]
    assert "\x1b[" not in result.stdout  # no colour when not on a terminal


def test_all_well_exits_0_and_the_api_says_the_same(tmp_path: Path) -> None:
    with live_server(tmp_path, clock=FrozenClock(NOW)) as server:
        result = server.cli("status", "--json", *AT)
        human = server.cli("status", *AT)
        ready = httpx.get(server.base_url + "/readyz").json()
        answer = httpx.get(
            server.base_url + "/api/status", headers={"authorization": f"Bearer {ADMIN_TOKEN}"}
        )
    assert result.exit_code == 0, result.stdout
    status = result.json()
    assert status["alerts"] == []
    assert status["server"] == {
        "url": server.base_url,
        "ready": True,
        "rules_version": ready["rules_version"],
        "rules_error": None,
    }
    assert status["events"] == {"waiting": 0, "oldest_waiting_seconds": None, "failed": 0}
    assert human.exit_code == 0 and human.stdout.startswith("All is well")
    assert answer.status_code == 200
    assert _without_disk(answer.json()) == _without_disk(status)


def test_the_api_needs_the_token_and_answers_what_the_cli_prints(tmp_path: Path) -> None:
    _scene("sqlite", tmp_path)
    with live_server(tmp_path, clock=FrozenClock(NOW)) as server:
        url = server.base_url + "/api/status"
        anonymous = httpx.get(url)
        wrong = httpx.get(url, headers={"authorization": "Bearer not-the-token"})
        answer = httpx.get(url, headers={"authorization": f"Bearer {ADMIN_TOKEN}"})
        result = server.cli("status", "--json", *AT)
    assert anonymous.status_code == 401 and wrong.status_code == 401
    assert "alerts" not in anonymous.text
    assert answer.status_code == 200 and result.exit_code == 1
    assert _without_disk(answer.json()) == _without_disk(result.json())
    assert _people(answer.json()["alerts"]) == ALERTS  # the server is up: no server alert


def _without_disk(status: dict[str, Any]) -> dict[str, Any]:
    """The status but the disk's free space, which other processes change between two reads."""
    return {**status, "storage": {**status["storage"], "disk_free_bytes": None}}


@pytest.mark.parametrize("at", ["yesterday", "2026-13-01"])
def test_a_bad_moment_is_a_usage_error(tmp_path: Path, at: str) -> None:
    result = run_cli(_config(tmp_path, "sqlite", free_port()), "status", "--at", at)
    assert result.exit_code == 2

"""The files a newcomer starts from agree with each other: demo config, starter rules."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.support import live_server, run_cli, wait_for

ROOT = Path(__file__).resolve().parents[2]


def test_starter_rules_are_valid_under_the_demo_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # the demo config's paths are relative to the checkout
    result = run_cli(ROOT / "examples" / "switchboard.toml", "rules", "check")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith("OK: ")


def test_a_server_with_the_starter_rules_is_ready_without_rules_error(tmp_path: Path) -> None:
    extra = f'[rules]\npath = "{ROOT / "rules"}"\n'
    with live_server(tmp_path, extra=extra) as server:

        def ready() -> bool:
            body = httpx.get(server.base_url + "/readyz", timeout=5).json()
            return body["rules_version"] is not None

        wait_for(ready)
        body = httpx.get(server.base_url + "/readyz", timeout=5).json()
        assert body["status"] == "ok"
        assert body["rules_error"] is None

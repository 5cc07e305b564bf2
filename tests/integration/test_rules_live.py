"""Live rules under a running server: edits go live, mistakes never do, SIGHUP reloads."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from router.rules import rules_version
from tests.support import ADMIN_TOKEN, config_text, free_port, live_server, wait_for

GOOD = """\
version: 1
rules:
  - id: hours
    when:
      channel: sms
      text: {contains_any: [hours]}
    then:
      - reply: {text: "%s"}
"""

#: Line 5, column 14: the operator `contain` is a typo of `contains`.
BROKEN = """\
version: 1
rules:
  - id: refunds
    when:
      text: {contain: refund}
    then:
      - escalate: {reason: refund}
"""


def _rules_extra(folder: Path) -> str:
    return f'[rules]\npath = "{folder}"\n'


def _ready(base_url: str) -> dict[str, Any]:
    response = httpx.get(base_url + "/readyz", timeout=5)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _wait_ready(base_url: str, check: Any, timeout: float = 15.0) -> dict[str, Any]:
    """Poll /readyz until `check(body)` holds; the last body is returned."""
    seen: dict[str, Any] = {}

    def condition() -> bool:
        seen.update(_ready(base_url))
        return bool(check(seen))

    wait_for(condition, timeout=timeout, interval=0.05)
    return seen


def _metric(base_url: str, name: str) -> float:
    text = httpx.get(base_url + "/metrics", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).text
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_edits_go_live_and_mistakes_never_do(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "support.yaml").write_text(GOOD % "Open 9 to 5.")
    first = rules_version(rules)
    with live_server(tmp_path, extra=_rules_extra(rules)) as server:
        url = server.base_url
        assert _ready(url) == {"status": "ok", "rules_version": first, "rules_error": None}

        (rules / "support.yaml").write_text(GOOD % "Open 8 to 6.")
        second = rules_version(rules)
        _wait_ready(url, lambda body: body["rules_version"] == second)

        (rules / "refunds.yaml").write_text(BROKEN)
        body = _wait_ready(url, lambda body: body["rules_error"] is not None)
        assert body["rules_version"] == second  # the old version is still live
        assert body["rules_error"].startswith("refunds.yaml:5:14: ")
        assert "contain" in body["rules_error"]
        assert _metric(url, "switchboard_rules_valid") == 0
        assert _metric(url, 'switchboard_rules_reload_total{outcome="invalid"}') >= 1

        (rules / "refunds.yaml").write_text(BROKEN.replace("contain:", "contains:"))
        third = rules_version(rules)
        body = _wait_ready(url, lambda body: body["rules_version"] == third)
        assert body["rules_error"] is None
        assert _metric(url, "switchboard_rules_valid") == 1


def test_missing_folder_is_an_error_until_it_appears(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    with live_server(tmp_path, extra=_rules_extra(rules)) as server:
        body = _ready(server.base_url)  # webhooks are still taken in: the server is ready
        assert body["rules_version"] is None
        assert "does not exist" in body["rules_error"]

        staging = tmp_path / "staging"
        staging.mkdir()
        (staging / "support.yaml").write_text(GOOD % "Open 9 to 5.")
        staging.rename(rules)
        version = rules_version(rules)
        body = _wait_ready(server.base_url, lambda body: body["rules_version"] == version)
        assert body["rules_error"] is None


def test_deleting_the_folder_keeps_the_live_rules(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "support.yaml").write_text(GOOD % "Open 9 to 5.")
    version = rules_version(rules)
    with live_server(tmp_path, extra=_rules_extra(rules)) as server:
        (rules / "support.yaml").unlink()
        rules.rmdir()
        body = _wait_ready(server.base_url, lambda body: body["rules_error"] is not None)
        assert body["rules_version"] == version
        assert "does not exist" in body["rules_error"]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path, int]]:
    """`switchboard serve` as a subprocess whose rules.path is a symlink (a deploy pattern)."""
    releases = tmp_path / "releases"
    for name, text in (("a", "Open 9 to 5."), ("b", "Open 8 to 6.")):
        (releases / name).mkdir(parents=True)
        (releases / name / "support.yaml").write_text(GOOD % text)
    link = tmp_path / "rules"
    link.symlink_to(releases / "a", target_is_directory=True)
    port = free_port()
    config = tmp_path / "switchboard.toml"
    config.write_text(
        config_text(tmp_path / "var" / "switchboard.db", port=port, extra=_rules_extra(link))
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "router", "--config", str(config), "serve"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _answers(url) or process.poll() is not None, timeout=30)
        assert process.poll() is None, process.stderr.read() if process.stderr else ""
        yield url, tmp_path, process.pid
    finally:
        process.terminate()
        process.wait(timeout=15)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url + "/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.integration
def test_sighup_reloads_after_a_symlink_swap(served: tuple[str, Path, int]) -> None:
    url, root, pid = served
    releases = root / "releases"
    assert _ready(url)["rules_version"] == rules_version(releases / "a")

    # Re-point the `rules` symlink atomically: no file under the watched folder changes,
    # so only the SIGHUP can make the new release live.
    fresh = root / "rules.new"
    fresh.symlink_to(releases / "b", target_is_directory=True)
    os.replace(fresh, root / "rules")
    assert _ready(url)["rules_version"] == rules_version(releases / "a")

    os.kill(pid, signal.SIGHUP)
    _wait_ready(url, lambda body: body["rules_version"] == rules_version(releases / "b"))

    # After the swap the watcher follows the new release folder.
    (releases / "b" / "support.yaml").write_text(GOOD % "Open 7 to 7.")
    _wait_ready(url, lambda body: body["rules_version"] == rules_version(releases / "b"))

"""Live rules under a running server: edits go live, mistakes never do, SIGHUP reloads."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from router.rules import rules_version
from tests.support import ADMIN_TOKEN, config_text, free_port, live_server, spawn_serve, wait_for

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


#: The attacks of issue 7: `when:` under 500 nested `{not: ` (ruamel recursed: a traceback, then
#: a server that never listened), 8,000 levels of flow nesting (43 s in ruamel).
DEEP_NOT = (
    "version: 1\nrules:\n  - id: x\n    when: "
    + "{not: " * 500
    + "{channel: sms}"
    + "}" * 500
    + "\n    then: [drop: {}]\n"
)
DEEP_FLOW = "version: 1\nrules: " + "[" * 8000 + "]" * 8000 + "\n"
#: (file content, where and what `serve` must report)
START_FAILURES = {
    "deep-not": (DEEP_NOT, "deep.yaml:4:185: nested too deeply, expected at most 32 levels"),
    "deep-flow": (DEEP_FLOW, "deep.yaml:2:1007: nested too deeply, expected at most 32 levels"),
    "typo": (BROKEN, "deep.yaml:5:14: unknown operator 'contain'"),
    "missing-folder": (None, "does not exist"),
}


def _serve(tmp_path: Path, rules: Path) -> subprocess.Popen[bytes]:
    config = tmp_path / "switchboard.toml"
    port = free_port()
    config.write_text(config_text(tmp_path / "var" / "s.db", port=port, extra=_rules_extra(rules)))
    return spawn_serve(config, subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=tmp_path)


@pytest.mark.integration
@pytest.mark.parametrize("case", START_FAILURES)
def test_serve_exits_1_with_the_located_error_when_rules_cannot_load(
    tmp_path: Path, case: str
) -> None:
    text, expected = START_FAILURES[case]
    rules = tmp_path / "rules"
    if text is not None:
        rules.mkdir()
        (rules / "deep.yaml").write_text(text)
    process = _serve(tmp_path, rules)
    try:
        _, stderr = process.communicate(timeout=60)  # the deadline: it must never hang
    finally:
        process.kill()
    message = stderr.decode()
    assert process.returncode == 1, message
    assert expected in message and "Traceback" not in message
    assert "the server did not start" in message


@pytest.mark.filterwarnings(
    "ignore::pytest.PytestUnhandledThreadExceptionWarning"
)  # uvicorn exits 3
def test_an_app_without_valid_rules_does_not_start(tmp_path: Path) -> None:
    """Embedded (no `serve` pre-check): the lifespan refuses to start, it never serves rule-less."""
    with (
        pytest.raises(AssertionError, match="server did not start"),
        live_server(tmp_path, extra=_rules_extra(tmp_path / "missing")),
    ):
        pass


@pytest.mark.parametrize("text", [DEEP_NOT, DEEP_FLOW], ids=["deep-not", "deep-flow"])
def test_attacks_dropped_into_a_running_server_are_reported(tmp_path: Path, text: str) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "support.yaml").write_text(GOOD % "Open 9 to 5.")
    version = rules_version(rules)
    with live_server(tmp_path, extra=_rules_extra(rules)) as server:
        url = server.base_url
        (rules / "deep.yaml").write_text(text)
        body = _wait_ready(url, lambda body: body["rules_error"] is not None)
        assert body["rules_version"] == version
        assert body["rules_error"].startswith("deep.yaml:")
        assert "nested too deeply" in body["rules_error"]
        assert _metric(url, "switchboard_rules_valid") == 0
        assert _metric(url, 'switchboard_rules_reload_total{outcome="invalid"}') >= 1

        (rules / "deep.yaml").unlink()
        body = _wait_ready(url, lambda body: body["rules_error"] is None)
        assert body["rules_version"] == version
        assert _metric(url, "switchboard_rules_valid") == 1


def test_a_failing_watcher_is_reported_until_it_watches_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The watcher library failing (here: as when the inotify watch limit is reached) shows on
    /readyz and in the metrics; edits still go live through the poll meanwhile."""
    import watchfiles

    real_awatch = watchfiles.awatch

    def failing_awatch(*args: Any, **kwargs: Any) -> Any:
        raise OSError(28, "inotify watch limit reached")

    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "support.yaml").write_text(GOOD % "Open 9 to 5.")
    monkeypatch.setattr(watchfiles, "awatch", failing_awatch)
    with live_server(tmp_path, extra=_rules_extra(rules)) as server:
        url = server.base_url
        body = _wait_ready(url, lambda body: body["rules_error"] is not None)
        assert "watching rules folder" in body["rules_error"]
        assert "inotify watch limit reached" in body["rules_error"]
        assert _metric(url, 'switchboard_rules_reload_total{outcome="watch_error"}') >= 1
        assert _metric(url, "switchboard_rules_valid") == 0

        monkeypatch.setattr(watchfiles, "awatch", real_awatch)
        body = _wait_ready(url, lambda body: body["rules_error"] is None)
        assert _metric(url, "switchboard_rules_valid") == 1


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
    """`switchboard serve` as a subprocess whose rules.path is a symlink (a deploy pattern),
    with the poll off (`rules.poll_seconds = 0`): only the watcher and SIGHUP reload, so a
    swap the watcher cannot see goes live through the signal or not at all. It logs at info
    to `serve.log`, so the test can see what caused each reload."""
    releases = tmp_path / "releases"
    for name, text in (("a", "Open 9 to 5."), ("b", "Open 8 to 6.")):
        (releases / name).mkdir(parents=True)
        (releases / name / "support.yaml").write_text(GOOD % text)
    link = tmp_path / "rules"
    link.symlink_to(releases / "a", target_is_directory=True)
    port = free_port()
    config = tmp_path / "switchboard.toml"
    text = config_text(
        tmp_path / "var" / "switchboard.db",
        port=port,
        extra=_rules_extra(link) + "poll_seconds = 0\n",
    )
    config.write_text(text.replace('level = "warning"', 'level = "info"'))
    with (tmp_path / "serve.log").open("wb") as log:
        process = spawn_serve(config, log, cwd=tmp_path)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _answers(url) or process.poll() is not None, timeout=30)
        assert process.poll() is None, (tmp_path / "serve.log").read_text()
        yield url, tmp_path, process.pid
    finally:
        process.terminate()
        process.wait(timeout=15)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url + "/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _rules_log(root: Path) -> list[tuple[str, str | None]]:
    """(event, version) of the server's `rules.*` log records so far, in order."""
    found = []
    for line in (root / "serve.log").read_bytes().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line still being written
        if isinstance(record, dict) and str(record.get("event", "")).startswith("rules."):
            found.append((record["event"], record.get("version")))
    return found


@pytest.mark.integration
def test_sighup_reloads_after_a_symlink_swap(served: tuple[str, Path, int]) -> None:
    url, root, pid = served
    releases = root / "releases"
    old, new = rules_version(releases / "a"), rules_version(releases / "b")
    assert _ready(url)["rules_version"] == old

    # Re-point the `rules` symlink atomically: no file under the watched folder changes and
    # the poll is off, so only the SIGHUP can make the new release live.
    fresh = root / "rules.new"
    fresh.symlink_to(releases / "b", target_is_directory=True)
    os.replace(fresh, root / "rules")
    assert _ready(url)["rules_version"] == old

    os.kill(pid, signal.SIGHUP)
    _wait_ready(url, lambda body: body["rules_version"] == new)
    # The signal caused the reload: the server took it before the new version went live.
    wait_for(lambda: ("rules.live", new) in _rules_log(root))  # lines are flushed every 0.5 s
    events = _rules_log(root)
    assert events.index(("rules.sighup", None)) < events.index(("rules.live", new)), events

    # After the swap the watcher (not a poll: there is none) follows the new release folder.
    (releases / "b" / "support.yaml").write_text(GOOD % "Open 7 to 7.")
    _wait_ready(url, lambda body: body["rules_version"] == rules_version(releases / "b"))

"""The files a newcomer starts from agree with each other and with the code: demo config,
starter rules, the systemd unit and the Prometheus alerts (checked by systemd-analyze and
promtool where installed)."""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from router.config import DispatchConfig
from router.http.server import UVICORN_OPTIONS
from router.metrics import Metrics
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


# -- examples/switchboard.service and examples/alerts.yml, checked by the real tools -------------

UNIT = ROOT / "examples" / "switchboard.service"
ALERTS = ROOT / "examples" / "alerts.yml"
ALERTS_TEST = Path(__file__).with_name("alerts_test.yml")
#: Where the shipped unit expects the install (README "Running in production").
SHIPPED_BINARY = "/opt/switchboard/.venv/bin/switchboard"
#: Series the alerts read that other exporters make: Prometheus itself and node_exporter.
EXTERNAL_SERIES = {"up", "node_filesystem_avail_bytes", "node_filesystem_size_bytes"}
#: The Debian package of each tool (.ci/run installs them).
TOOL_PACKAGES = {"systemd-analyze": "systemd", "promtool": "prometheus"}
#: Labels a scrape adds to every series.
SCRAPE_LABELS = {"job", "instance"}


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (Debian: apt-get install -y {TOOL_PACKAGES[name]})")
    return path


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)


def _installed_unit(tmp_path: Path) -> Path:
    """The shipped unit with ExecStart at this checkout's venv: `verify` wants it executable."""
    text = UNIT.read_text()
    assert text.count(f"ExecStart={SHIPPED_BINARY} serve\n") == 1
    here = Path(sys.executable).with_name("switchboard")
    unit = tmp_path / UNIT.name
    unit.write_text(text.replace(f"ExecStart={SHIPPED_BINARY}", f"ExecStart={here}"))
    return unit


def test_the_service_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    unit = _installed_unit(tmp_path)
    result = _run(_tool("systemd-analyze"), "verify", "--man=no", str(unit))
    # An unknown key or a bad value is only a warning (exit 0): any line about the unit fails.
    complaints = [line for line in result.stderr.splitlines() if UNIT.name in line]
    assert result.returncode == 0 and not complaints, result.stderr


def test_the_service_unit_stays_hardened(tmp_path: Path) -> None:
    unit = _installed_unit(tmp_path)
    tool = _tool("systemd-analyze")
    # Offline scoring (systemd 250+): 1.4 of 10 today, "OK"; 2.0 is the most it may grow to.
    result = _run(tool, "security", "--offline=true", "--threshold=20", "--no-pager", str(unit))
    if "--offline" in result.stderr and "unrecognized" in result.stderr:
        pytest.skip("this systemd-analyze has no offline security scoring (systemd < 250)")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr


def test_the_service_unit_waits_longer_than_serve_takes_to_stop() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string(UNIT.read_text())
    service = unit["Service"]
    assert service["KillSignal"] == "SIGTERM"  # the graceful stop of `serve` (uvicorn's)
    assert service["Restart"] == "on-failure"
    # In-flight requests, then sends already out record their outcome, then the store closes.
    budget = UVICORN_OPTIONS["timeout_graceful_shutdown"] + DispatchConfig().timeout_seconds
    stop = service["TimeoutStopSec"]
    assert stop.endswith("s") and float(stop[:-1]) >= 2 * budget


def test_promtool_accepts_the_alerting_rules() -> None:
    result = _run(_tool("promtool"), "check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_alerts_fire_on_series_shaped_like_ours() -> None:
    result = _run(_tool("promtool"), "test", "rules", str(ALERTS_TEST))
    assert result.returncode == 0, result.stdout + result.stderr


def _exported() -> dict[str, set[str]]:
    """Every series name router/metrics.py exports, with its label names."""
    names: dict[str, set[str]] = {}
    for metric in vars(Metrics()).values():
        if not isinstance(metric, MetricWrapperBase):
            continue
        labels = set(metric._labelnames)
        for family in metric.describe():
            suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}
            for suffix in suffixes.get(family.type, [""]):
                names[family.name + suffix] = labels
    return names


SELECTOR = re.compile(r"\b(switchboard_\w+)\s*(?:\{([^}]*)\})?")


def _alert_expressions() -> list[str]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


def test_every_series_the_alerts_read_is_exported_with_those_labels() -> None:
    known = _exported()
    used = set()
    for expr in _alert_expressions():
        used |= set(re.findall(r"\bnode_\w+|\bup(?=\s*\{)", expr))
        for name, matchers in SELECTOR.findall(expr):
            used.add(name)
            assert name in known, f"{name} is not in router/metrics.py"
            labels = set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers))
            assert labels <= known[name] | SCRAPE_LABELS, f"{name}: unknown labels in {matchers}"
    assert used - set(known) == EXTERNAL_SERIES


def test_the_promtool_test_series_have_our_names_and_labels() -> None:
    known = _exported()
    tests = yaml.safe_load(ALERTS_TEST.read_text())["tests"]
    series = [item["series"] for test in tests for item in test["input_series"]]
    for text in series:
        name, _, rest = text.partition("{")
        labels = set(re.findall(r"(\w+)\s*=", rest)) - SCRAPE_LABELS
        if name in EXTERNAL_SERIES:
            continue
        assert labels == known[name], f"{text}: router/metrics.py labels {name} {known[name]}"

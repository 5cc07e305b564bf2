"""`switchboard reconcile` (SPEC §9, §12) and its `[reconcile]` config: JSON per source,
exit 1 when a source failed, sandbox sources skipped and saying so, `--dry-run` storing
nothing; the official Twilio client against the loopback FakeTwilio."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from router.config import ConfigError, parse_settings
from tests.fakes.twilio_api import FakeTwilio, server_error
from tests.support import config_text, run_cli

OURS, CUSTOMER = "+15559870000", "+15551230001"


@pytest.fixture
def fake() -> Iterator[FakeTwilio]:
    with FakeTwilio() as running:
        yield running


def write_config(tmp_path: Path, fake: FakeTwilio | None) -> Path:
    sms = (
        f'[channels.sms]\nmode = "live"\naccount_sid = "{fake.account_sid}"\n'
        f'auth_token = "{fake.auth_token}"\nfrom = "{OURS}"\napi_base = "{fake.url}"\n'
        if fake
        else ""
    )
    path = tmp_path / "switchboard.toml"
    path.write_text(config_text(tmp_path / "var" / "switchboard.db", extra=sms))
    return path


def test_reconcile_prints_one_item_per_source_and_stores_what_is_new(
    tmp_path: Path, fake: FakeTwilio
) -> None:
    sid = fake.receive(CUSTOMER, OURS, "hello")
    config = write_config(tmp_path, fake)

    dry = run_cli(config, "reconcile", "--dry-run", "--json")
    assert dry.exit_code == 0, dry.stderr
    twilio = dry.json()[0]
    assert (twilio["source"], twilio["recovered"]) == ("twilio", 1)
    assert twilio["new"] == [f"twilio:{sid}"]
    assert run_cli(config, "events", "list", "--json").json() == []

    done = run_cli(config, "reconcile", "--json")
    assert done.exit_code == 0, done.stderr
    reports = {r["source"]: r for r in done.json()}
    assert set(reports["twilio"]) == {
        "source", "since", "until", "seen", "recovered", "receipts", "error", "skipped",
    }  # fmt: skip
    assert (reports["twilio"]["recovered"], reports["twilio"]["error"]) == (1, None)
    assert reports["stripe"]["skipped"] and reports["slack"]["skipped"]
    [event] = run_cli(config, "events", "list", "--json").json()
    assert (event["dedupe_key"], event["via"]) == (f"twilio:{sid}", "reconcile")


def test_a_failed_source_exits_1_and_a_sandbox_one_is_skipped(
    tmp_path: Path, fake: FakeTwilio
) -> None:
    fake.fail_next(1, server_error(503), op="list")
    failed = run_cli(write_config(tmp_path, fake), "reconcile", "twilio", "--json")
    assert failed.exit_code == 1
    [report] = failed.json()
    assert "503" in report["error"]

    sandbox = run_cli(write_config(tmp_path, None), "reconcile", "twilio")
    assert sandbox.exit_code == 0, sandbox.stderr
    assert "sandbox" in sandbox.stdout


@pytest.mark.parametrize(
    ("line", "key"),
    [('interval = "soon"', "reconcile.interval"), ('lookback = "0s"', "reconcile.lookback")],
)
def test_reconcile_config_errors_name_the_key_and_line(line: str, key: str) -> None:
    text = f'[server]\nport = 8080\n\n[reconcile]\non_start = false\n{line}\n'
    with pytest.raises(ConfigError) as caught:
        parse_settings(text)
    assert (caught.value.key, caught.value.line) == (key, 6)


def test_reconcile_interval_zero_means_never() -> None:
    settings = parse_settings('[reconcile]\ninterval = "0"\n')
    assert settings.reconcile.interval == "0" and settings.reconcile.on_start

"""`switchboard serve` says where it listens: one JSON log line with the real bound address."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from router.http.server import listening_url
from tests.support import config_text, free_port, spawn_serve, wait_for


def _listening(log: Path) -> list[dict[str, Any]]:
    """The `http.listening` records written so far (the log may end mid-line)."""
    records = []
    for line in log.read_bytes().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("event") == "http.listening":
            records.append(record)
    return records


def _info_config(tmp_path: Path, port: int) -> Path:
    """The test config at the default log level (the suite's config says `warning`)."""
    config = tmp_path / "switchboard.toml"
    text = config_text(tmp_path / "var" / "s.db", port=port)
    config.write_text(text.replace('level = "warning"', 'level = "info"'))
    return config


@pytest.mark.integration
@pytest.mark.parametrize("any_port", [True, False], ids=["port-0", "configured-port"])
def test_serve_says_where_it_listens(tmp_path: Path, any_port: bool) -> None:
    """Port 0: a script asking for any free port learns the real one from the line."""
    port = 0 if any_port else free_port()
    log = tmp_path / "serve.log"
    config = _info_config(tmp_path, port)
    with log.open("wb") as out:
        process = spawn_serve(config, out)
    try:
        wait_for(lambda: bool(_listening(log)) or process.poll() is not None, timeout=30)
        assert process.poll() is None, log.read_text()
        [record] = _listening(log)
        url = record["url"]
        assert url.startswith("http://127.0.0.1:") and not url.endswith(":0")
        if port:
            assert url == f"http://127.0.0.1:{port}"
        assert record["message"] == f"listening on {url}"
        assert record["level"] == "info" and record["component"] == "switchboard.http"
        assert httpx.get(url + "/healthz", timeout=5).status_code == 200
    finally:
        process.kill()
        process.wait(timeout=10)


def test_ipv6_hosts_are_bracketed() -> None:
    assert listening_url(("::1", 8080, 0, 0)) == "http://[::1]:8080"

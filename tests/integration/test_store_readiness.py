"""/readyz tells the truth about commits: while the disk is full, ingest answers 503 and so
does /readyz (reads and the write lock still work then); once space is back, both recover
without a restart.

The full disk is real: the server process's file-size limit (RLIMIT_FSIZE, set from outside
with prlimit) is lowered to the size of its files, so the WAL cannot grow, exactly as on a
disk with no space left; raising it again is freeing space.
"""

from __future__ import annotations

import resource
import time
from pathlib import Path

import httpx
import pytest

from tests.cases.email import mailgun_fields, multipart_request
from tests.cases.twilio import message_params, signed
from tests.support import PUBLIC_URL, SECRETS, ServerProcess, server_process

pytestmark = pytest.mark.integration


def post_message(server: ServerProcess, unique: str) -> int:
    params = message_params(unique)
    request = signed(PUBLIC_URL, "/webhooks/twilio/messages", params, SECRETS["twilio"][0])
    return server.post(request, timeout=10).status_code


def readyz(server: ServerProcess) -> int:
    return httpx.get(server.base_url + "/readyz", timeout=10).status_code


def largest_file(folder: Path) -> int:
    return max(path.stat().st_size for path in folder.iterdir() if path.is_file())


def test_readyz_is_503_while_commits_fail_and_recovers_with_space(tmp_path: Path) -> None:
    with server_process(tmp_path, log_name=None) as server:
        assert post_message(server, "BEFORE") == 200
        pid = server.process.pid
        unlimited = resource.prlimit(pid, resource.RLIMIT_FSIZE)
        full = (largest_file(server.db_path.parent), unlimited[1])
        resource.prlimit(pid, resource.RLIMIT_FSIZE, full)
        statuses = []
        while 503 not in statuses and len(statuses) < 500:
            statuses.append(post_message(server, f"FULL{len(statuses):03d}"))
        assert statuses[-1] == 503, statuses
        assert readyz(server) == 503
        assert readyz(server) == 503  # the probe commit fails too: still no space

        resource.prlimit(pid, resource.RLIMIT_FSIZE, unlimited)
        assert readyz(server) == 200
        assert post_message(server, "AFTER") == 200
        stored = {event["dedupe_key"] for event in server.events()}
        assert "twilio:SMAFTER" in stored


def test_readyz_is_503_while_blobs_cannot_be_written(tmp_path: Path) -> None:
    """Large bodies and attachments go to the blob folder: when it cannot be written, the
    email is answered 503 and /readyz says so, until it can be written again."""
    with server_process(tmp_path, log_name=None) as server:
        blobs = server.db_path.parent / "blobs"
        blobs.mkdir(exist_ok=True)
        blobs.rename(tmp_path / "blobs-away")
        blobs.write_bytes(b"not a folder")  # every blob write now fails
        key = SECRETS["mailgun"][0]
        big = multipart_request(
            "/webhooks/email/mailgun",
            mailgun_fields("blob-down", key, int(time.time())),
            {"attachment-1": ("a.bin", b"z" * 200_000, "application/octet-stream")},
        )
        assert server.post(big).status_code == 503
        assert readyz(server) == 503
        assert post_message(server, "SMALL") == 200  # the database itself is fine
        assert readyz(server) == 503

        blobs.unlink()
        (tmp_path / "blobs-away").rename(blobs)
        assert readyz(server) == 200
        assert server.post(big).status_code == 200

"""Backups and restores of a real SQLite store (SPEC §12): the command line, the checks and
refusals, the lock a store holder keeps, scheduled backups with `keep`, and the config."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
import subprocess
import sys
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from router.config import ConfigError, parse_settings
from router.errors import StoreUnavailable
from router.store.backup import MANIFEST, latest_backup, read_manifest, take_backup
from router.store.backup_schedule import prune, scheduled_backup
from router.store.holding import Hold
from router.store.queries import migrations
from router.store.sqlite import SQLiteStore
from tests.support import ROOT, config_text, run_cli

T0 = datetime(2026, 12, 1, 3, 0, tzinfo=UTC)


@pytest.fixture
def install(tmp_path: Path) -> Path:
    """A migrated store with a row of its own (`store_probe`); returns the config path."""
    config = tmp_path / "switchboard.toml"
    config.write_text(config_text(tmp_path / "var" / "switchboard.db"))
    assert run_cli(config, "migrate").exit_code == 0
    return config


def db_of(config: Path) -> Path:
    return config.parent / "var" / "switchboard.db"


def marker(db: Path) -> list[str]:
    """The labels of the `marks` table (made by `mark`), to tell stores apart."""
    with closing(sqlite3.connect(db)) as conn:
        return [row[0] for row in conn.execute("SELECT label FROM marks ORDER BY label")]


def mark(db: Path, label: str, *, leave_wal: bool = False) -> None:
    """Add a row to a `marks` table; `leave_wal`: in a process that dies without closing,
    so the row stays in an un-checkpointed `-wal` file, as after a kill -9."""
    script = (
        "import os, sqlite3, sys\n"
        "conn = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "conn.execute('PRAGMA journal_mode = WAL')\n"
        "conn.execute('PRAGMA wal_autocheckpoint = 0')\n"
        "conn.execute('CREATE TABLE IF NOT EXISTS marks (label TEXT)')\n"
        "conn.execute('INSERT INTO marks VALUES (?)', (sys.argv[2],))\n"
        "os._exit(0) if sys.argv[3] == '1' else conn.close()\n"
    )
    args = [sys.executable, "-c", script, str(db), label, "1" if leave_wal else "0"]
    subprocess.run(args, check=True)


def test_backup_then_restore_into_an_empty_place(install: Path, tmp_path: Path) -> None:
    db = db_of(install)
    mark(db, "original")
    taken = run_cli(install, "backup", str(tmp_path / "copy"), "--json")
    assert taken.exit_code == 0, taken.stderr
    summary = taken.json()
    assert summary["schema_version"] == migrations("sqlite")[-1][0]  # the latest
    assert summary["counts"] == {"events": 0, "outbox": 0, "contacts": 0, "conversations": 0}
    manifest = json.loads((tmp_path / "copy" / MANIFEST).read_text())
    assert set(manifest) == {"created_at", "schema_version", "counts", "files"}
    assert list(manifest["files"]) == ["switchboard.db"]

    db.unlink()
    restored = run_cli(install, "restore", str(tmp_path / "copy"))
    assert restored.exit_code == 0, restored.stderr
    assert marker(db) == ["original"]
    assert not db.with_name("switchboard.db.pre-restore").exists()


def test_backup_into_a_non_empty_folder_is_refused(install: Path, tmp_path: Path) -> None:
    target = tmp_path / "taken"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    result = run_cli(install, "backup", str(target))
    assert result.exit_code == 1
    assert "is not empty" in result.stderr
    assert [p.name for p in target.iterdir()] == ["notes.txt"]


def test_blobs_are_copied_listed_and_restored(tmp_path: Path) -> None:
    db = tmp_path / "live" / "switchboard.db"
    _migrated(db)
    digest = SQLiteStore(db).blobs.put(b"attachment " * 10_000)
    report = take_backup(db, tmp_path / "copy", now=T0)
    name = f"blobs/{digest[:2]}/{digest}"
    assert report.manifest.files[name] == digest  # content-addressed: the name is the sum

    other = tmp_path / "other" / "switchboard.db"
    config = tmp_path / "other.toml"
    config.write_text(config_text(other))
    assert run_cli(config, "restore", str(tmp_path / "copy")).exit_code == 0
    assert (other.parent / name).read_bytes() == b"attachment " * 10_000


def _migrated(db: Path) -> None:
    async def open_close() -> None:
        store = SQLiteStore(db)
        await store.open()
        await store.close()

    asyncio.run(open_close())


def test_restore_refuses_a_tampered_copy(install: Path, tmp_path: Path) -> None:
    db = db_of(install)
    mark(db, "live")
    assert run_cli(install, "backup", str(tmp_path / "copy")).exit_code == 0
    copy = tmp_path / "copy" / "switchboard.db"
    data = bytearray(copy.read_bytes())
    data[-100] ^= 0xFF  # one byte of the last page
    copy.write_bytes(bytes(data))

    result = run_cli(install, "restore", str(tmp_path / "copy"), "--force")
    assert result.exit_code == 1
    assert "checksum does not match" in result.stderr
    assert marker(db) == ["live"]
    assert not db.with_name("switchboard.db.pre-restore").exists()


def test_restore_refuses_a_copy_that_fails_integrity_check(install: Path, tmp_path: Path) -> None:
    """Checksums that match a damaged file (rewritten by hand) still do not pass."""
    assert run_cli(install, "backup", str(tmp_path / "copy")).exit_code == 0
    copy = tmp_path / "copy" / "switchboard.db"
    data = bytearray(copy.read_bytes())
    page = 4096
    data[page * 2 : page * 2 + 200] = bytes(range(200))  # a b-tree page's header, garbled
    copy.write_bytes(bytes(data))
    manifest = json.loads((tmp_path / "copy" / MANIFEST).read_text())
    manifest["files"]["switchboard.db"] = hashlib.sha256(bytes(data)).hexdigest()
    (tmp_path / "copy" / MANIFEST).write_text(json.dumps(manifest))

    result = run_cli(install, "restore", str(tmp_path / "copy"), "--force")
    assert result.exit_code == 1
    assert "integrity_check failed" in result.stderr or "not a readable" in result.stderr


def test_force_keeps_the_replaced_store_and_its_wal_beside(install: Path, tmp_path: Path) -> None:
    db = db_of(install)
    mark(db, "backed-up")
    assert run_cli(install, "backup", str(tmp_path / "copy")).exit_code == 0
    mark(db, "after the backup", leave_wal=True)  # committed, only in the -wal file
    assert db.with_name("switchboard.db-wal").stat().st_size > 0

    refused = run_cli(install, "restore", str(tmp_path / "copy"))
    assert refused.exit_code == 1
    assert "--force" in refused.stderr

    restored = run_cli(install, "restore", str(tmp_path / "copy"), "--force")
    assert restored.exit_code == 0, restored.stderr
    assert marker(db) == ["backed-up"]  # the old WAL was not replayed into the copy
    kept = db.with_name("switchboard.db.pre-restore")
    assert marker(kept) == ["after the backup", "backed-up"]  # its WAL went with it

    again = run_cli(install, "restore", str(tmp_path / "copy"), "--force")
    assert again.exit_code == 1  # never overwrites an earlier *.pre-restore
    assert "earlier restore" in again.stderr


async def test_restore_refuses_while_a_process_has_the_store_open(
    install: Path, tmp_path: Path
) -> None:
    assert run_cli(install, "backup", str(tmp_path / "copy")).exit_code == 0
    store = SQLiteStore(db_of(install))
    await store.open()
    try:
        result = run_cli(install, "restore", str(tmp_path / "copy"), "--force")
    finally:
        await store.close()
    assert result.exit_code == 1
    assert "in use" in result.stderr
    assert not db_of(install).with_name("switchboard.db.pre-restore").exists()
    # Closed, the store is free again.
    assert run_cli(install, "restore", str(tmp_path / "copy"), "--force").exit_code == 0


async def test_a_store_does_not_open_while_a_restore_holds_it(install: Path) -> None:
    hold = Hold(db_of(install), exclusive=True)
    try:
        with pytest.raises(StoreUnavailable, match="being restored"):
            await SQLiteStore(db_of(install)).open()
    finally:
        hold.release()


@pytest.mark.parametrize("command", [["backup", "somewhere"], ["restore", "."]])
def test_postgres_commands_exit_1_and_point_to_the_readme(
    tmp_path: Path, command: list[str]
) -> None:
    config = tmp_path / "switchboard.toml"
    url = "postgresql://sb@127.0.0.1:1/none"
    config.write_text(config_text(tmp_path / "unused.db", storage_url=url))
    result = run_cli(config, *command)
    assert result.exit_code == 1
    assert "pg_dump" in result.stderr
    assert 'section "Backups on PostgreSQL"' in result.stderr
    assert not (tmp_path / "somewhere").exists()


def test_the_readme_section_the_commands_point_to_exists() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### Backups on PostgreSQL", 1)[1].split("\n## ", 1)[0]
    for needed in ("pg_dump", "pg_restore", "contacts", "consent_ledger"):
        assert needed in section


def test_scheduled_backups_keep_the_newest(install: Path, tmp_path: Path) -> None:
    root = tmp_path / "backups"
    root.mkdir()
    (root / "mine").mkdir()  # not a dated folder: never touched
    taken = [scheduled_backup(db_of(install), root, T0 + timedelta(hours=h), 2) for h in range(4)]
    remaining = sorted(p.name for p in root.iterdir())
    assert remaining == sorted([taken[2].path.name, taken[3].path.name, "mine"])
    assert latest_backup(root) == (T0 + timedelta(hours=3), taken[3].path)


def test_an_unfinished_backup_does_not_count_towards_keep(install: Path, tmp_path: Path) -> None:
    root = tmp_path / "backups"
    first = scheduled_backup(db_of(install), root, T0, 1)
    died = root / "20261201T040000.000Z"
    died.mkdir()  # a backup that died before its manifest: newer, but not complete
    assert prune(root, 1) == []
    assert first.path.exists()
    second = scheduled_backup(db_of(install), root, T0 + timedelta(hours=2), 1)
    assert sorted(root.iterdir()) == [second.path]


def test_latest_backup_skips_unreadable_manifests(install: Path, tmp_path: Path) -> None:
    assert latest_backup(tmp_path / "backups") is None
    good = take_backup(db_of(install), tmp_path / "backups" / "a", now=T0)
    broken = tmp_path / "backups" / "b"
    broken.mkdir()
    (broken / MANIFEST).write_text("{not json")
    assert latest_backup(tmp_path / "backups") == (T0, good.path)
    assert read_manifest(good.path).created_at == T0


BASE = '[storage]\nurl = "sqlite:///var/x.db"\n\n[backup]\n'


@pytest.mark.parametrize(
    ("text", "key", "line", "fragment"),
    [
        (BASE + 'dir = "b"\ninterval = "often"\n', "backup.interval", 6, "not a duration"),
        (BASE + "keep = 0\n", "backup.keep", 5, ">= 1"),
        (BASE + "every = 3\n", "backup.every", 5, "unknown key"),
        (
            '[storage]\nurl = "postgresql://a@b/c"\n\n[backup]\ninterval = "6h"\n',
            "backup.interval",
            5,
            "pg_dump",
        ),
    ],
)
def test_backup_config_errors_name_the_key_and_line(
    text: str, key: str, line: int, fragment: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_settings(text, "switchboard.toml")
    error = caught.value
    assert (error.key, error.line) == (key, line), str(error)
    assert fragment in error.message, error.message


def test_backup_config_defaults() -> None:
    backup = parse_settings("").backup
    assert (backup.dir, backup.interval, backup.keep) == ("var/backups", "0", 7)

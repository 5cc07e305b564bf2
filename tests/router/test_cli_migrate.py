# ruff: noqa: F811  (the `backend` fixture is imported, then named by the tests)
"""`switchboard migrate`: applies pending migrations on either backend, says what it did."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from router.store.queries import migrations
from tests.postgres import SERVER, drop_schema, run_blocking
from tests.router.test_store import backend  # noqa: F401  (fixture)
from tests.support import run_cli


def config(tmp_path: Path, backend: str) -> Path:
    if backend == "postgres":
        assert SERVER.url is not None
        run_blocking(lambda: drop_schema(SERVER.url or ""))
        url = SERVER.url
    else:
        url = f"sqlite:///{tmp_path}/var/switchboard.db"
    path = tmp_path / "switchboard.toml"
    path.write_text(f'[storage]\nurl = "{url}"\n', encoding="utf-8")
    return path


def test_migrate_applies_pending_versions_once(backend: str, tmp_path: Path) -> None:
    path = config(tmp_path, backend)
    versions = [version for version, _ in migrations("sqlite")]
    assert versions == [version for version, _ in migrations("postgres")]  # one scheme
    first = run_cli(path, "migrate", "--json")
    assert first.exit_code == 0, first.stderr
    assert json.loads(first.stdout) == {
        "backend": backend,
        "applied": versions,
        "version": versions[-1],
    }
    again = run_cli(path, "migrate")
    assert again.exit_code == 0, again.stderr
    assert again.stdout.strip() == (
        f"Nothing to apply ({backend}): the schema is at version {versions[-1]}."
    )


@pytest.mark.postgres
def test_migrate_with_postgres_unreachable_fails_without_the_password(tmp_path: Path) -> None:
    path = tmp_path / "switchboard.toml"
    path.write_text(
        '[storage]\nurl = "postgresql://sb:s3cr3t-pw@127.0.0.1:1/none"\n', encoding="utf-8"
    )
    result = run_cli(path, "migrate", "--json")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert "store unavailable" in result.stderr and "s3cr3t-pw" not in result.stderr


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_migrations_are_numbered_one_by_one_alike_on_both_backends(kind: str) -> None:
    """A store applies only versions above its own, so a number skipped and filled in later
    (two branches each taking one) would never run where the later one already has: the
    versions go 1, 2, 3... with no gap, the same on both backends."""
    versions = [version for version, _ in migrations(kind)]
    assert versions == list(range(1, len(versions) + 1))
    assert versions == [version for version, _ in migrations("sqlite")]

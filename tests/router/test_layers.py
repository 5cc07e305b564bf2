"""Dependencies point one way (issue 19): read from the source's imports, not by running it."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: Where providers are wired in: the only modules of the core that may import them.
WIRING = ("router/http/", "router/cli/", "router/__main__.py")
#: What the core may import of `channels/`: the protocols, not a provider.
CHANNEL_PROTOCOLS = {"channels", "channels.base", "channels.outbound", "channels.history"}
PROVIDER_SDKS = ("twilio", "slack_sdk", "stripe", "standardwebhooks", "aiosmtplib")


def _imports(path: Path) -> Iterator[str]:
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module


def _modules(*folders: str) -> list[Path]:
    return sorted(path for folder in folders for path in (ROOT / folder).rglob("*.py"))


def _core() -> list[Path]:
    return [
        path
        for path in _modules("router")
        if not path.relative_to(ROOT).as_posix().startswith(WIRING)
    ]


def _under(name: str, *packages: str) -> bool:
    return any(name == package or name.startswith(package + ".") for package in packages)


@pytest.mark.parametrize("path", _core(), ids=lambda path: path.relative_to(ROOT).as_posix())
def test_the_core_imports_no_provider_and_not_its_wiring(path: Path) -> None:
    for name in _imports(path):
        assert not _under(name, *PROVIDER_SDKS), name
        assert not _under(name, "channels") or name in CHANNEL_PROTOCOLS, name
        assert not _under(name, "router.http", "router.cli"), name


@pytest.mark.parametrize(
    "path", _modules("statemachines"), ids=lambda path: path.relative_to(ROOT).as_posix()
)
def test_the_machines_import_neither_channels_nor_the_rules_engine(path: Path) -> None:
    for name in _imports(path):
        assert not _under(name, "channels", "router.rules", "router.pipeline"), name

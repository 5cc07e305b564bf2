"""ARCHITECTURE.md stays true: every path it names exists, and it stays a ten-minute read."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAP = ROOT / "ARCHITECTURE.md"
_CODE = re.compile(r"`([^`\n]+)`")
_FILE_ENDINGS = (".py", ".md", ".sql", ".yaml", ".yml", ".toml", ".service")


def _named_paths(text: str) -> list[str]:
    """Code spans that name a file or folder of the repository (not endpoints or commands)."""
    found = []
    for span in _CODE.findall(text):
        if " " in span or ":" in span or span.startswith(("/", "-")):
            continue
        if "/" in span or span.endswith(_FILE_ENDINGS):
            found.append(span)
    return found


def _exists(named: str) -> bool:
    if "/" not in named:  # a module named within its folder's paragraph: somewhere in the tree
        return any(p for p in ROOT.rglob(named) if ".venv" not in p.parts)
    if any(c in named for c in "*?["):
        return any(ROOT.glob(named.rstrip("/")))
    return (ROOT / named).exists()


def test_every_path_the_map_names_exists() -> None:
    named = _named_paths(MAP.read_text(encoding="utf-8"))
    assert len(named) > 40, "the map names the modules it describes"
    missing = [n for n in named if not _exists(n)]
    assert missing == [], f"ARCHITECTURE.md names paths that do not exist: {missing}"


def test_the_map_reads_in_ten_minutes() -> None:
    words = len(MAP.read_text(encoding="utf-8").split())
    assert words < 2_500, f"{words} words: more than ten minutes of reading"


def test_the_readme_points_to_the_map() -> None:
    assert "ARCHITECTURE.md" in (ROOT / "README.md").read_text(encoding="utf-8")


# What each layer must never import (ARCHITECTURE.md, "Codemap"): module prefixes.
_SDKS = ("twilio", "slack_sdk", "stripe", "aiosmtplib", "standardwebhooks")
_FORBIDDEN: dict[str, tuple[str, ...]] = {
    "channels": (
        "router.pipeline",
        "router.store",
        "router.rules",
        "router.http",
        "router.cli",
        "router.status",
        "statemachines",
    ),
    "statemachines": (
        "router.pipeline",
        "router.store",
        "router.rules",
        "router.http",
        "router.cli",
        "router.status",
        "channels",
        *_SDKS,
    ),
    "router/pipeline": ("router.http", "router.cli", *_SDKS),
    "router/store": (
        "router.pipeline",
        "router.http",
        "router.cli",
        "router.rules",
        "channels",
        *_SDKS,
    ),
    "router/rules": (
        "router.pipeline",
        "router.store",
        "router.http",
        "router.cli",
        "channels",
        *_SDKS,
    ),
    "router/status": ("router.http", "router.cli", *_SDKS),
    # Pages for people: wiring (the store, views, config), but no channel and no provider.
    "router/console": ("router.http", "router.cli", "channels", *_SDKS),
}
#: The core knows channels only through the shapes they share.
_CHANNEL_SHAPES = ("channels", "channels.base", "channels.outbound", "channels.history")


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def _breaks(module: str, forbidden: tuple[str, ...]) -> bool:
    return any(module == f or module.startswith(f + ".") for f in forbidden)


#: Where providers are wired in: the only modules of the core that may import them.
_WIRING = ("router/http/", "router/cli/", "router/__main__.py")


def _reaches_into_a_channel(path: Path, module: str) -> bool:
    """The core (all of `router/` but its wiring) knows channels only by their shapes."""
    relative = path.relative_to(ROOT).as_posix()
    if not relative.startswith("router/") or relative.startswith(_WIRING):
        return False
    return _breaks(module, ("channels", *_SDKS)) and module not in _CHANNEL_SHAPES


def test_each_layer_imports_only_what_the_map_allows() -> None:
    broken = []
    for folder, forbidden in _FORBIDDEN.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            broken += [
                f"{path.relative_to(ROOT)} imports {m}"
                for m in _imports(path)
                if _breaks(m, forbidden)
            ]
    for path in sorted((ROOT / "router").rglob("*.py")):
        broken += [
            f"{path.relative_to(ROOT)} imports {m}"
            for m in _imports(path)
            if _reaches_into_a_channel(path, m)
        ]
    assert broken == [], "\n".join(broken)

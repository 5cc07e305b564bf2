"""ARCHITECTURE.md stays true: every path it names exists, and it stays a ten-minute read."""

from __future__ import annotations

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

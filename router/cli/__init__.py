"""The `switchboard` command (SPEC §9)."""

from __future__ import annotations

from router.cli.main import main

__all__ = ["main"]

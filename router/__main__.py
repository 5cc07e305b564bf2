"""`python -m router` is the `switchboard` command."""

from __future__ import annotations

from router.cli.main import main

main()

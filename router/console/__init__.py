"""The web console for people (SPEC §13): server-rendered pages under `/console/`.

Wiring like `router/http`: it reads the store through `router.views` and its own views, and
knows no channel. `router.http.app.create_app` mounts `console_router` with `templates`.
"""

from __future__ import annotations

from router.console.pages import console_router, templates

__all__ = ["console_router", "templates"]

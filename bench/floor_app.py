"""The framework floor for bench/ingest.py: litestar on the webhook path, body read, 200.

No verification, no parsing, no store: what one uvicorn worker with this litestar can answer
at best. Served exactly as `switchboard serve` serves the real app (router.http.server, with the
default `[server]` connection limits), so the ratio durable/floor measures the ingest path alone.
`--no-limits` serves it with uvicorn's plain httptools protocol instead: the difference is what
the limits cost (bench/ingest.py --limits-cost).

Run: python bench/floor_app.py --port 8099 [--no-limits]
"""

from __future__ import annotations

import argparse
from typing import Any

from litestar import Litestar, Request, Response, get, post
from litestar.params import FromPath

from router.config import ServerConfig
from router.http.server import UVICORN_OPTIONS, uvicorn_config

TWIML_EMPTY = b'<?xml version="1.0" encoding="UTF-8"?><Response/>'


@post("/webhooks/{route:path}", status_code=200, include_in_schema=False)
async def webhook(request: Request[Any, Any, Any], route: FromPath[str]) -> Response[bytes]:
    """Read the body, answer what Twilio expects; nothing else."""
    await request.body()
    return Response(content=TWIML_EMPTY, status_code=200, media_type="text/xml")


@get("/healthz", include_in_schema=False)
async def healthz() -> dict[str, str]:
    """So the bench can wait for start-up the same way for both servers."""
    return {"status": "ok"}


app = Litestar(
    route_handlers=[webhook, healthz],
    request_max_body_size=10 * 1024 * 1024,
    openapi_config=None,
    debug=False,
)


def main() -> None:
    """Serve the floor app on loopback."""
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8099)
    parser.add_argument(
        "--no-limits", action="store_true", help="uvicorn's own httptools protocol, no limits"
    )
    args = parser.parse_args()
    if args.no_limits:
        uvicorn.run(app, host=args.host, port=args.port, **UVICORN_OPTIONS)
    else:
        config = uvicorn_config(app, ServerConfig(), host=args.host, port=args.port)
        uvicorn.Server(config).run()


if __name__ == "__main__":
    main()

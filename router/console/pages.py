"""The console's routes (SPEC §13): sign-in, log-out and the pages, all under `/console`.

Every page needs a session (else 303 to the sign-in page); every POST needs the session's
CSRF token and an `Origin` of this site (else 403, and nothing changes). Pages only read.
"""

from __future__ import annotations

import hmac
from pathlib import Path
from typing import Any
from urllib.parse import quote

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from litestar import Request, Response, Router, get, post
from litestar.datastructures import Cookie
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.response import Redirect, Template
from litestar.template.config import TemplateConfig

from router.clock import Clock
from router.config import Settings
from router.console.sessions import COOKIE, Session, Sessions, same_site
from router.console.views import conversation_page, escalations, find_conversation
from router.errors import StoreUnavailable
from router.store.base import Store

HERE = Path(__file__).parent
SIGN_IN = "/console/signin"
#: No script, no frame, no request to anywhere else: the pages are plain HTML and one CSS file.
_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}
#: The nav's pages that come in a later version: path -> title.
LATER = {"dead-letters": "Dead letters", "events": "Events", "rules": "Rules"}


class Console:
    """What the console's handlers need, built once per app."""

    def __init__(self, settings: Settings, store: Store, clock: Clock) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock
        self.sessions = Sessions(settings)
        self.css = (HERE / "static" / "console.css").read_bytes()

    def session(self, request: Request[Any, Any, Any]) -> Session | None:
        return self.sessions.read(request.cookies.get(COOKIE), self.clock.now())

    def cookie(self, value: str, *, max_age: int) -> Cookie:
        return Cookie(
            key=COOKIE,
            value=value,
            path="/console",
            max_age=max_age,
            httponly=True,
            samesite="strict",
            secure=self.sessions.secure,
        )


def templates() -> TemplateConfig[JinjaTemplateEngine]:
    """Jinja with autoescaping on, and undefined names an error rather than blank text."""
    environment = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["keypath"] = lambda key: quote(str(key), safe="")
    return TemplateConfig(instance=JinjaTemplateEngine.from_environment(environment))


def _page(name: str, status: int = 200, **context: Any) -> Template:
    return Template(template_name=name, context=context, status_code=status, headers=_HEADERS)


def _to_sign_in() -> Redirect:
    return Redirect(SIGN_IN, status_code=303, headers=_HEADERS)


def _unavailable(_: Request[Any, Any, Any], exc: StoreUnavailable) -> Response[str]:
    """The store does not answer: say so (503) rather than fail with a 500."""
    del exc  # its text may name the database; the logs of the store have it
    text = "503 Service Unavailable: the store does not answer; try again in a moment.\n"
    return Response(text, status_code=503, media_type="text/plain", headers={"Retry-After": "5"})


def _forbidden(why: str) -> Response[str]:
    return Response(f"403 Forbidden: {why}\n", status_code=403, media_type="text/plain")


async def _refusal(
    request: Request[Any, Any, Any], console: Console, session: Session | None
) -> Response[str] | None:
    """None if a POST may act: a foreign `Origin`, or a missing or wrong CSRF token, is 403."""
    settings = console.settings
    if not same_site(
        request.headers.get("origin"), settings.server.public_url, request.headers.get("host")
    ):
        return _forbidden("the request comes from another site")
    if session is None:
        return None
    form = await request.form()
    given = form.get("csrf")
    if not isinstance(given, str) or not hmac.compare_digest(given, session.csrf):
        return _forbidden("missing or wrong CSRF token; reload the page and try again")
    return None


@get("/static/console.css", sync_to_thread=False)
def stylesheet(console: NamedDependency[Console]) -> Response[bytes]:
    """The one stylesheet, served without a session (the sign-in page uses it)."""
    headers = {"Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff"}
    return Response(console.css, media_type="text/css; charset=utf-8", headers=headers)


@get("/signin", sync_to_thread=False)
def sign_in_page(
    request: Request[Any, Any, Any], console: NamedDependency[Console]
) -> Template | Redirect:
    if console.session(request) is not None:
        return Redirect("/console/", status_code=303, headers=_HEADERS)
    return _page("signin.html", error=None)


@post("/signin", status_code=303)
async def sign_in(request: Request[Any, Any, Any], console: NamedDependency[Console]) -> Any:
    """A right token gets a session cookie; a wrong one the page again, with an error."""
    refused = await _refusal(request, console, None)
    if refused is not None:
        return refused
    form = await request.form()
    token = form.get("token")
    user = console.sessions.user_of(token) if isinstance(token, str) and token else None
    if user is None:
        return _page("signin.html", status=401, error="That token is not right.")
    value = console.sessions.issue(user, console.clock.now())
    cookie = console.cookie(value, max_age=console.sessions.max_age)
    return Redirect("/console/", status_code=303, headers=_HEADERS, cookies=[cookie])


@post("/logout", status_code=303)
async def log_out(request: Request[Any, Any, Any], console: NamedDependency[Console]) -> Any:
    session = console.session(request)
    if session is None:
        return _to_sign_in()
    refused = await _refusal(request, console, session)
    if refused is not None:
        return refused
    console.sessions.revoke(request.cookies.get(COOKIE, ""), session, console.clock.now())
    gone = console.cookie("", max_age=0)
    return Redirect(SIGN_IN, status_code=303, headers=_HEADERS, cookies=[gone])


@get(["/", "/escalations"])
async def escalations_page(
    request: Request[Any, Any, Any], console: NamedDependency[Console]
) -> Any:
    session = console.session(request)
    if session is None:
        return _to_sign_in()
    items = await escalations(console.store, console.clock.now())
    return _page("escalations.html", session=session, active="escalations", items=items)


@get("/conversations/{ref:str}")
async def conversation(
    request: Request[Any, Any, Any], ref: FromPath[str], console: NamedDependency[Console]
) -> Any:
    """One conversation, by key or by the id of one of its events (links carry an event id:
    a key holds the customer's number)."""
    session = console.session(request)
    if session is None:
        return _to_sign_in()
    record = await find_conversation(console.store, ref)
    if record is None:
        return _page(
            "missing.html",
            status=404,
            session=session,
            active="escalations",
            what="that conversation",
        )
    page = await conversation_page(console.store, record, console.clock.now())
    return _page("conversation.html", session=session, active="escalations", page=page)


@get("/{section:str}", sync_to_thread=False)
def later(
    request: Request[Any, Any, Any], section: FromPath[str], console: NamedDependency[Console]
) -> Any:
    """The nav's pages still to come; any other path is not found (after sign-in)."""
    session = console.session(request)
    if session is None:
        return _to_sign_in()
    if section not in LATER:
        return _page("missing.html", status=404, session=session, active="", what=section)
    return _page("later.html", session=session, active=section, title=LATER[section])


def console_router(settings: Settings, store: Store, clock: Clock) -> Router | None:
    """The console mounted at `/console`, or None when it is off or no token can sign in."""
    console = Console(settings, store, clock)
    if not settings.console.enabled or not console.sessions.usable:
        return None
    return Router(
        path="/console",
        route_handlers=[
            stylesheet,
            sign_in_page,
            sign_in,
            log_out,
            escalations_page,
            conversation,
            later,
        ],
        dependencies={"console": Provide(lambda: console, sync_to_thread=False)},
        exception_handlers={StoreUnavailable: _unavailable},
        include_in_schema=False,
    )

"""Console sign-in, sessions and CSRF (SPEC §13) through real HTTP on loopback: who gets in,
for how long, and that a refused POST changes nothing."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from router.clock import FrozenClock
from router.config import parse_settings
from router.console import console_router
from router.console.sessions import COOKIE
from router.store.factory import store_from_settings
from tests.console.browser import Browser
from tests.support import ADMIN_TOKEN, LiveServer, live_server

ANA_TOKEN = "ana-console-token"
USERS = '[console]\nsession_hours = 12\n[console.users]\nana = "env:SB_CONSOLE_ANA"\n'
PAGES = [
    "/console/",
    "/console",
    "/console/escalations",
    "/console/conversations/sms:+15551230001:+15559870000",
    "/console/conversations/01JAAAAAAAAAAAAAAAAAAAAAAA",
    "/console/dead-letters",
    "/console/events",
    "/console/rules",
    "/console/no-such-page",
]
CLOCK = FrozenClock(datetime(2026, 11, 23, 15, 0, tzinfo=UTC))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    os.environ["SB_CONSOLE_ANA"] = ANA_TOKEN
    try:
        with live_server(tmp_path_factory.mktemp("console"), clock=CLOCK, extra=USERS) as running:
            yield running
    finally:
        del os.environ["SB_CONSOLE_ANA"]


@pytest.fixture
def browser(server: LiveServer) -> Iterator[Browser]:
    opened = Browser(server.base_url)
    yield opened
    opened.close()


def signed_in(browser: Browser, token: str = ADMIN_TOKEN) -> Browser:
    browser.sign_in(token)
    return browser


def test_the_sign_in_page_has_a_token_field_and_a_sign_in_button(browser: Browser) -> None:
    page = browser.get("/console/signin")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert '<label for="token">Token</label>' in page.text
    assert 'id="token" name="token"' in page.text
    assert ">Sign in</button>" in page.text
    assert "<script" not in page.text
    assert browser.get("/console/static/console.css").headers["content-type"].startswith("text/css")


@pytest.mark.parametrize(("token", "user"), [(ADMIN_TOKEN, "admin"), (ANA_TOKEN, "ana")])
def test_a_token_signs_in_as_its_user(browser: Browser, token: str, user: str) -> None:
    response = browser.sign_in(token)
    assert response.headers["location"] == "/console/"
    page = browser.get("/console/")
    assert page.status_code == 200
    assert f"Signed in as <strong>{user}</strong>" in page.text
    assert ">Log out</button>" in page.text
    assert browser.cookie is not None and browser.cookie.startswith(f"{user}:")


@pytest.mark.parametrize("token", ["", "wrong", ADMIN_TOKEN + "x", ADMIN_TOKEN[:-1], "admin"])
def test_a_wrong_token_gets_the_page_again_with_an_error_and_no_cookie(
    browser: Browser, token: str
) -> None:
    response = browser.post("/console/signin", {"token": token})
    assert response.status_code == 401
    assert "That token is not right." in response.text
    assert 'role="alert"' in response.text
    assert "set-cookie" not in response.headers
    assert browser.get("/console/").status_code == 303


def test_the_session_cookie_is_http_only_strict_secure_and_scoped(browser: Browser) -> None:
    browser.sign_in(ADMIN_TOKEN)
    attributes = _attributes(browser.set_cookie)
    assert attributes["httponly"] is True
    assert attributes["samesite"] == "strict"
    assert attributes["secure"] is True  # the test config's public_url is https
    assert attributes["path"] == "/console"
    assert attributes["max-age"] == str(12 * 3600)


def test_the_cookie_is_not_secure_with_a_plain_http_public_url(tmp_path: Path) -> None:
    with live_server(tmp_path, public_url="http://127.0.0.1:8080") as plain:
        browser = Browser(plain.base_url)
        browser.sign_in(ADMIN_TOKEN)
        attributes = _attributes(browser.set_cookie)
        browser.close()
    assert "secure" not in attributes
    assert attributes["httponly"] is True
    assert attributes["samesite"] == "strict"


def _attributes(header: str | None) -> dict[str, str | bool]:
    assert header is not None
    name_value, *parts = [part.strip() for part in header.split(";")]
    assert name_value.startswith(f"{COOKIE}=")
    found: dict[str, str | bool] = {}
    for part in parts:
        key, sep, value = part.partition("=")
        found[key.lower()] = (
            value.lower() if key.lower() == "samesite" else (value if sep else True)
        )
    return found


@pytest.mark.parametrize("path", PAGES)
def test_without_a_session_every_console_path_redirects_to_sign_in(
    browser: Browser, path: str
) -> None:
    response = browser.get(path)
    assert response.status_code == 303
    assert response.headers["location"] == "/console/signin"


def test_a_session_expires_after_session_hours(browser: Browser) -> None:
    signed_in(browser)
    CLOCK.advance(timedelta(hours=12) - timedelta(seconds=1))
    assert browser.get("/console/").status_code == 200
    CLOCK.advance(timedelta(seconds=1))
    response = browser.get("/console/")
    assert response.status_code == 303
    assert response.headers["location"] == "/console/signin"


def _forgeries(cookie: str) -> list[str]:
    user, expiry, nonce, signature = cookie.split(":")
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
    later = str(int(expiry) + 3600)
    return [
        f"{user}:{expiry}:{nonce}:{flipped}",
        f"ana:{expiry}:{nonce}:{signature}",
        f"{user}:{later}:{nonce}:{signature}",
        f"{user}:{expiry}:{nonce}x:{signature}",
        f"{user}:{expiry}:{nonce}",
        f"{user}:{expiry}:{nonce}:",
        "admin",
    ]


@pytest.mark.parametrize("which", range(7))
def test_a_forged_cookie_redirects_to_sign_in(browser: Browser, which: int) -> None:
    signed_in(browser)
    browser.cookie = _forgeries(browser.cookie or "")[which]
    response = browser.get("/console/")
    assert response.status_code == 303
    assert response.headers["location"] == "/console/signin"


@pytest.mark.parametrize(
    ("csrf", "headers"),
    [
        (None, {}),
        ("wrong", {}),
        ("", {}),
        ("RIGHT", {"Origin": "https://evil.example.com"}),
        ("RIGHT", {"Origin": "null"}),
    ],
)
def test_a_refused_logout_is_403_and_the_session_still_works(
    browser: Browser, csrf: str | None, headers: dict[str, str]
) -> None:
    signed_in(browser)
    right = browser.csrf()
    data = {} if csrf is None else {"csrf": right if csrf == "RIGHT" else csrf}
    response = browser.post("/console/logout", data, headers=headers)
    assert response.status_code == 403
    assert "set-cookie" not in response.headers
    assert browser.get("/console/").status_code == 200


def test_a_foreign_origin_cannot_sign_in(browser: Browser) -> None:
    response = browser.post(
        "/console/signin", {"token": ADMIN_TOKEN}, headers={"Origin": "https://evil.example.com"}
    )
    assert response.status_code == 403
    assert "set-cookie" not in response.headers


def test_logout_with_the_csrf_token_ends_the_session(server: LiveServer, browser: Browser) -> None:
    signed_in(browser)
    kept = browser.cookie
    response = browser.post(
        "/console/logout",
        {"csrf": browser.csrf()},
        headers={"Origin": "https://switchboard.example.com"},
    )
    assert response.status_code == 303
    assert response.headers["location"] == "/console/signin"
    assert _attributes(browser.set_cookie)["max-age"] == "0"
    assert browser.get("/console/").status_code == 303
    browser.cookie = kept  # a copy of the cookie is refused too
    assert browser.get("/console/").status_code == 303
    other = Browser(server.base_url)
    other.sign_in(ADMIN_TOKEN)  # other sessions live on
    assert other.get("/console/").status_code == 200
    other.close()


def test_the_console_is_off_when_disabled_or_without_any_token(tmp_path: Path) -> None:
    with live_server(tmp_path, extra="[console]\nenabled = false\n") as off:
        assert Browser(off.base_url).get("/console/signin").status_code == 404
    db = tmp_path / "x.db"
    untokened = parse_settings(f'[storage]\nurl = "sqlite:///{db}"\n')
    assert console_router(untokened, store_from_settings(untokened), CLOCK) is None

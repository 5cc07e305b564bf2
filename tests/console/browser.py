"""A person's browser, as far as the console cares: one session cookie, sent back as given.

httpx's own cookie jar would not send a `Secure` cookie over the loopback's plain HTTP (the
test server's `public_url` is https, as behind a proxy), so the cookie is kept here.
"""

from __future__ import annotations

import re
from http.cookies import SimpleCookie
from typing import Any

import httpx

from router.console.sessions import COOKIE

_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


class Browser:
    def __init__(self, base_url: str) -> None:
        self.client = httpx.Client(base_url=base_url, follow_redirects=False, timeout=10)
        self.cookie: str | None = None
        #: The `Set-Cookie` header of the last response that had one.
        self.set_cookie: str | None = None

    def close(self) -> None:
        self.client.close()

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self._keep(self.client.get(path, headers=self._headers(kwargs), **kwargs))

    def post(self, path: str, data: dict[str, str], **kwargs: Any) -> httpx.Response:
        headers = self._headers(kwargs)
        return self._keep(self.client.post(path, data=data, headers=headers, **kwargs))

    def sign_in(self, token: str) -> httpx.Response:
        response = self.post("/console/signin", {"token": token})
        assert response.status_code == 303, response.text
        assert self.cookie, "no session cookie"
        return response

    def csrf(self) -> str:
        page = self.get("/console/")
        assert page.status_code == 200, page.text
        match = _CSRF.search(page.text)
        assert match, "no CSRF token in the page"
        return match[1]

    def _headers(self, kwargs: dict[str, Any]) -> dict[str, str]:
        headers = dict(kwargs.pop("headers", {}))
        if self.cookie is not None:
            headers["Cookie"] = f"{COOKIE}={self.cookie}"
        return headers

    def _keep(self, response: httpx.Response) -> httpx.Response:
        header = response.headers.get("set-cookie")
        self.set_cookie = header
        if header:
            morsel = SimpleCookie(header).get(COOKIE)
            if morsel is not None:
                self.cookie = morsel.value or None
        return response

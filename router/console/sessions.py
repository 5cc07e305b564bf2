"""Console sign-in, session cookies and CSRF tokens (SPEC §13), with no state on the server.

A session cookie is `user:expiry:nonce:signature`, the signature an HMAC of the rest under a key
derived from every token that can sign in (`server.admin_token` and `[console.users]`): a
restart keeps sessions, and rotating any token ends them all. A CSRF token is an HMAC of the
session cookie under the same key, so each session has its own. Only log-outs are remembered,
in memory, until the cookies they ended would have expired.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import urlsplit

from router.config import Settings

COOKIE = "switchboard_console"
#: Who signs in with `server.admin_token`.
ADMIN = "admin"


@dataclass(frozen=True)
class Session:
    """A signed-in person: their name, when the session ends, and its CSRF token."""

    user: str
    expires: datetime
    csrf: str


class Sessions:
    """Exchanges tokens for session cookies and reads them back."""

    def __init__(self, settings: Settings) -> None:
        tokens: dict[str, str] = dict(settings.console.users)
        if settings.server.admin_token:
            tokens[ADMIN] = settings.server.admin_token
        self._tokens = tokens
        self._lifetime = timedelta(hours=settings.console.session_hours)
        material = b"".join(
            _framed(name.encode()) + _framed(secret.encode())
            for name, secret in sorted(tokens.items())
        )
        self._key = hmac.new(b"switchboard console session v1", material, hashlib.sha256).digest()
        #: Cookies logged out of, until they expire: a copy of one is refused too. Kept in
        #: memory: a restart forgets them (the cookie itself is gone from the browser).
        self._revoked: dict[str, datetime] = {}
        self.secure = urlsplit(settings.server.public_url).scheme == "https"
        self.max_age = int(self._lifetime.total_seconds())

    @property
    def usable(self) -> bool:
        """Whether anyone can sign in at all (a token is configured)."""
        return bool(self._tokens)

    def user_of(self, token: str) -> str | None:
        """The user a token signs in, compared in constant time with every token."""
        found = None
        for name, secret in self._tokens.items():
            if hmac.compare_digest(token.encode(), secret.encode()):
                found = name
        return found

    def issue(self, user: str, now: datetime) -> str:
        """A cookie value for `user`, valid for `console.session_hours` from `now`."""
        nonce = secrets.token_urlsafe(9)  # two sign-ins in one second are two sessions
        payload = f"{user}:{int((now + self._lifetime).timestamp())}:{nonce}"
        return f"{payload}:{self._sign('session', payload)}"

    def read(self, cookie: str | None, now: datetime) -> Session | None:
        """The session of a cookie; None if missing, forged, expired or of an unknown user."""
        if not cookie or cookie.count(":") != 3:
            return None
        user, expiry, nonce, signature = cookie.split(":")
        if not hmac.compare_digest(signature, self._sign("session", f"{user}:{expiry}:{nonce}")):
            return None
        if user not in self._tokens or not (expiry.isascii() and expiry.isdigit()):
            return None
        expires = datetime.fromtimestamp(int(expiry), tz=now.tzinfo)
        if expires <= now or cookie in self._revoked:
            return None
        return Session(user=user, expires=expires, csrf=self._sign("csrf", cookie))

    def revoke(self, cookie: str, session: Session, now: datetime) -> None:
        """Log out: the cookie is refused from now on, even if a copy of it is sent."""
        self._revoked = {c: at for c, at in self._revoked.items() if at > now}
        self._revoked[cookie] = session.expires

    def _sign(self, purpose: str, text: str) -> str:
        digest = hmac.new(self._key, f"{purpose}\0{text}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _framed(part: bytes) -> bytes:
    return len(part).to_bytes(4, "big") + part


def same_site(origin: str | None, public_url: str, host: str | None) -> bool:
    """Whether a POST's `Origin` is this site: absent (not a browser's cross-site form), the
    public URL's origin, or the origin of the host the request was sent to."""
    if origin is None:
        return True
    allowed = {_origin(public_url)}
    if host:
        allowed |= {f"http://{host}", f"https://{host}"}
    return origin.rstrip("/").lower() in {a.lower() for a in allowed}


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"

"""The shape of one provider's test case, shared by the adapter contract suite."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any


@dataclass(frozen=True)
class SignedRequest:
    """A webhook ready to POST: path, headers, body, optional basic auth."""

    path: str
    body: bytes
    headers: dict[str, str]
    auth: tuple[str, str] | None = None

    def with_headers(self, **changes: str | None) -> SignedRequest:
        """Copy with headers set (a None value removes the header; `_` in names means `-`)."""
        headers = dict(self.headers)
        for name, value in changes.items():
            real = next(
                (h for h in headers if h.lower() == name.replace("_", "-").lower()),
                name.replace("_", "-"),
            )
            headers.pop(real, None)
            if value is not None:
                headers[real] = value
        return replace(self, headers=headers)


@dataclass(frozen=True)
class ProviderCase:
    """How to make correctly signed requests for one endpoint, with the official signing code.

    `sign(secret, unique, timestamp)` returns a request whose provider id derives from `unique`
    (so each call can be a distinct delivery) and whose signature timestamp is `timestamp`
    (unix seconds; ignored by providers that sign none).
    """

    id: str
    source: str
    sign: Callable[[str, str, int], SignedRequest]
    #: The request with its signature (header, field or credentials) removed.
    strip_signature: Callable[[SignedRequest], SignedRequest]
    #: The signed request altered after signing, in whatever the signature covers.
    tamper: Callable[[SignedRequest], SignedRequest]
    #: Normalised fields expected in `events list --json` for `unique` (a subset).
    expected: Callable[[str], dict[str, Any]]
    #: The dedupe key expected for `unique`.
    dedupe_key: Callable[[str], str]
    #: Whether the signature carries a timestamp that can go stale.
    signs_timestamp: bool = True
    #: The answer body's media type and a fragment it must contain.
    ack_media_type: str = "application/json"
    ack_contains: bytes = b""

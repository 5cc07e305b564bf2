"""Stripe: POST /webhooks/stripe, snapshot events (`"object": "event"`).

Verification is Stripe's documented scheme, computed here because the library's
`WebhookSignature.verify_header` reads `time.time()` and takes no clock: the header is
`t=<unix>,v1=<hex>[,v1=<hex>...][,v0=...]`; the signed payload is `<t>.<raw body>`; each v1 is
compared in constant time with HMAC-SHA256 under every active secret; a timestamp older than
`tolerance_seconds` by our injected clock is refused. As in the library, a timestamp in the
future is not refused (the event id dedupe covers replays). tests/channels/test_stripe.py
checks that this agrees with `verify_header` on every fixture.

Normalisation: `type` = `provider_type` = the Stripe event type (`invoice.payment_failed`);
`dedupe_key` = `stripe:` + event id; no channel; `data` = the event's `data.object` plus
`previous_attributes` when Stripe sends it (`*.updated` events); `occurred_at` = `created`.
The contact is taken from the object when obvious: an email (`customer_email`, `email`,
`receipt_email`, then `customer_details`/`billing_details.email`) first, else a phone
(`customer_phone`, `phone`, then the same nested details) that parses as E.164.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar

import msgspec
import phonenumbers

from channels.base import Ack, InboundRequest, Parsed, PayloadError, SignatureError
from router.clock import Clock
from router.events import Contact, Event
from router.ids import new_ulid

SIGNATURE_HEADER = "stripe-signature"
SCHEME = "v1"
ACK = Ack(body=b'{"received":true}')
_EMAIL_FIELDS = ("customer_email", "email", "receipt_email")
_PHONE_FIELDS = ("customer_phone", "phone")
_NESTED = ("customer_details", "billing_details")
#: Where a person's name is, by object kind (`name` is a person's only on a customer).
_NAME_FIELDS = {"customer": ("name",)}


def parse_signature_header(header: str) -> tuple[int, list[str]]:
    """`(t, [v1 signatures])` read as stripe-python reads them; ValueError if unreadable."""
    timestamp: int | None = None
    signatures: list[str] = []
    for item in header.split(","):
        parts = item.split("=", 2)
        if parts[0] not in ("t", SCHEME):
            continue
        if len(parts) < 2:
            raise ValueError(f"{parts[0]} without a value")
        if parts[0] == SCHEME:
            signatures.append(parts[1])
        elif timestamp is None:
            timestamp = int(parts[1])
    if timestamp is None:
        raise ValueError("no t= in Stripe-Signature")
    return timestamp, signatures


def compute_signature(secret: str, timestamp: int, payload: bytes) -> str:
    """HMAC-SHA256 hex of `<t>.<payload>` under `secret`, as Stripe signs.

    Over the raw bytes (the library decodes them as UTF-8 first): an authentic body that is
    not UTF-8 is then malformed (400, quarantined), not unsigned.
    """
    signed = b"%d.%s" % (timestamp, payload)
    return hmac.new(secret.encode("utf-8"), signed, hashlib.sha256).hexdigest()


class StripeData(msgspec.Struct, kw_only=True):
    object: dict[str, Any]
    previous_attributes: dict[str, Any] | None = None


class StripeEvent(msgspec.Struct, kw_only=True):
    """The parts of a snapshot event Switchboard uses; other fields are ignored."""

    id: str
    type: str
    created: int
    data: StripeData
    livemode: bool | None = None
    api_version: str | None = None
    account: str | None = None


_decoder = msgspec.json.Decoder(StripeEvent)


class StripeAdapter:
    """Stripe snapshot events, verified against every active `whsec_` secret."""

    source = "stripe"
    content_types: ClassVar[frozenset[str]] = frozenset({"application/json"})

    def __init__(
        self, signing_secrets: Sequence[str], tolerance_seconds: int, clock: Clock
    ) -> None:
        self._secrets = list(signing_secrets)
        self._tolerance = tolerance_seconds
        self._clock = clock

    def verify(self, request: InboundRequest) -> None:
        header = request.headers.get(SIGNATURE_HEADER)
        if not header:
            raise SignatureError("missing Stripe-Signature")
        try:
            timestamp, signatures = parse_signature_header(header)
        except ValueError as exc:
            raise SignatureError("unreadable Stripe-Signature") from exc
        if not signatures:
            raise SignatureError(f"no {SCHEME} signature in Stripe-Signature")
        if not self._any_valid(timestamp, request.body, signatures):
            raise SignatureError("Stripe-Signature does not match")
        if timestamp < self._clock.now().timestamp() - self._tolerance:
            raise SignatureError("stale Stripe-Signature timestamp")

    def _any_valid(self, timestamp: int, payload: bytes, signatures: list[str]) -> bool:
        """Every secret against every v1 signature, each compared in constant time."""
        found = False
        for secret in self._secrets:
            expected = compute_signature(secret, timestamp, payload).encode()
            for given in signatures:
                found |= hmac.compare_digest(expected, given.encode("utf-8", "replace"))
        return found

    def parse(self, request: InboundRequest) -> Parsed:
        try:
            stripe_event = _decoder.decode(request.body)
        except msgspec.DecodeError as exc:  # ValidationError is a subclass
            raise PayloadError(f"Stripe event: {exc}") from exc
        if not stripe_event.id or not stripe_event.type:
            raise PayloadError("Stripe event without id or type")
        return Parsed(events=[_event(request, stripe_event)], ack=ACK)


def _event(request: InboundRequest, stripe_event: StripeEvent) -> Event:
    obj = stripe_event.data.object
    data = dict(obj)
    if stripe_event.data.previous_attributes is not None:
        data["previous_attributes"] = stripe_event.data.previous_attributes
    return Event(
        id=new_ulid(request.received_at),
        source="stripe",
        type=stripe_event.type,
        provider_type=stripe_event.type,
        dedupe_key=f"stripe:{stripe_event.id}",
        contact=contact_of(obj),
        data=data,
        received_at=request.received_at,
        occurred_at=_from_unix(stripe_event.created),
        correlation_id=request.correlation_id,
    )


def contact_of(obj: dict[str, Any]) -> Contact | None:
    """The obvious person of a Stripe object: an email address, else an E.164 phone."""
    nested = [obj[key] for key in _NESTED if isinstance(obj.get(key), dict)]
    places = [obj, *nested]
    name = _first_str([obj], _NAME_FIELDS.get(str(obj.get("object")), ("customer_name",)))
    name = name or _first_str(nested, ("name",))
    email = _first_str(places, _EMAIL_FIELDS)
    if email and "@" in email:
        return Contact(address=email, name=name)
    phone = _e164(_first_str(places, _PHONE_FIELDS))
    return Contact(address=phone, name=name) if phone else None


def _first_str(places: list[dict[str, Any]], keys: Sequence[str]) -> str | None:
    """The first non-blank string among `keys`, place by place."""
    for place in places:
        for key in keys:
            value = place.get(key)
            if isinstance(value, str) and value.strip():
                return value.strip()
    return None


def _e164(raw: str | None) -> str | None:
    """An E.164 number if `raw` is one in international form (Stripe keeps what was typed)."""
    if not raw:
        return None
    try:
        number = phonenumbers.parse(raw, None)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def _from_unix(seconds: int) -> datetime | None:
    try:
        return datetime.fromtimestamp(seconds, UTC)
    except (ValueError, OverflowError, OSError):
        return None

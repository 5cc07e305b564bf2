"""Twilio, inbound: SMS/MMS/WhatsApp and message status callbacks.

Verification is the documented X-Twilio-Signature scheme, computed once: HMAC over the URL
Twilio called followed by the sorted form parameters (each name, then each of its distinct
values, sorted), base64. twilio's `RequestValidator.validate` signs the URL twice (with and
without the port) on every call and halves the ingest ceiling; here the port variant is tried
only when the first comparison fails. tests/channels/test_twilio_signature.py holds the
equivalence with the library on every fixture and on its own test vectors. Twilio signs no
timestamp: replay protection is the dedupe on MessageSid.

The sending side is `channels/twilio_send.py`.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import itertools
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar, Literal
from urllib.parse import parse_qs, urlparse

from channels.base import Ack, InboundRequest, Parsed, PayloadError, SignatureError
from router.events import Attachment, Channel, Contact, Event, EventType
from router.ids import new_ulid
from router.keys import number_conversation

SIGNATURE_HEADER = "x-twilio-signature"
SETTINGS_HEADER = "x-twilio-webhooks-signature-settings"
_HASHES = {"HMAC_SHA1": hashlib.sha1, "HMAC_SHA256": hashlib.sha256}
TWIML_EMPTY = b'<?xml version="1.0" encoding="UTF-8"?><Response/>'


def compute_signature(
    token: bytes, url: str, params: Iterable[tuple[str, str]], algorithm: str = "HMAC_SHA1"
) -> bytes:
    """Twilio's signature of `url` + params, base64 (bytes).

    The library sorts the distinct names, then each name's distinct values: that is the
    order of the distinct (name, value) pairs sorted as tuples.
    """
    signed = url + "".join(itertools.chain.from_iterable(sorted(set(params))))
    return base64.b64encode(hmac.digest(token, signed.encode("utf-8"), _HASHES[algorithm]))


@functools.lru_cache(maxsize=256)
def signed_urls(url: str) -> tuple[str, str]:
    """The URL as twilio's library reads it, then the same URL with its port removed, or
    with the default port added (Twilio signs either form depending on its backend).

    Both go through `urlparse(...).geturl()` as in the library, which normalises the URL
    (lower-case scheme, no empty `?`), so we accept exactly the URLs it accepts.
    """
    parts = urlparse(url)
    if parts.port:
        alternate = parts._replace(netloc=parts.netloc.rpartition(":")[0])
    else:
        port = 443 if parts.scheme == "https" else 80
        alternate = parts._replace(netloc=f"{parts.netloc}:{port}")
    return parts.geturl(), alternate.geturl()


def signature_algorithm(settings_header: str | None) -> str:
    """`algorithm=` of X-Twilio-Webhooks-Signature-Settings; HMAC_SHA1 when absent."""
    for part in (settings_header or "").split(","):
        name, sep, value = part.partition("=")
        if sep and name.strip() == "algorithm" and value.strip():
            return value.strip().upper()
    return "HMAC_SHA1"


class TwilioAdapter:
    """One Twilio webhook endpoint: `messages` (inbound) or `status` (delivery callbacks)."""

    source = "twilio"
    content_types: ClassVar[frozenset[str]] = frozenset({"application/x-www-form-urlencoded"})

    def __init__(self, auth_tokens: Sequence[str], kind: Literal["messages", "status"]) -> None:
        self._tokens = [token.encode("utf-8") for token in auth_tokens]
        self.kind = kind

    def verify(self, request: InboundRequest) -> None:
        signature = request.headers.get(SIGNATURE_HEADER)
        if not signature:
            raise SignatureError("missing X-Twilio-Signature")
        algorithm = signature_algorithm(request.headers.get(SETTINGS_HEADER))
        if algorithm not in _HASHES:
            raise SignatureError(f"unsupported signature algorithm {algorithm}")
        params = self._signed_params(request)
        given = signature.encode("ascii", "replace")
        for url in signed_urls(request.url):
            if self._matches(url, params, given, algorithm):
                return
        raise SignatureError("X-Twilio-Signature does not match")

    def _matches(self, url: str, params: list[tuple[str, str]], given: bytes, alg: str) -> bool:
        found = False
        for token in self._tokens:
            found |= hmac.compare_digest(compute_signature(token, url, params, alg), given)
        return found

    @staticmethod
    def _signed_params(request: InboundRequest) -> list[tuple[str, str]]:
        """Form params; for a JSON body none, its hash being in the URL's bodySHA256 instead.

        A form body is signed through its params even if the URL has a bodySHA256 (as the
        library does when given the form).
        """
        if request.content_type == "application/x-www-form-urlencoded":
            try:
                return request.form()
            except PayloadError as exc:
                raise SignatureError("body is not UTF-8 form data") from exc
        query = parse_qs(urlparse(request.url).query)
        if "bodySHA256" not in query:
            raise SignatureError("a non-form body needs bodySHA256 in the URL")
        expected = hashlib.sha256(request.body).hexdigest().encode()
        if not hmac.compare_digest(expected, query["bodySHA256"][0].encode()):
            raise SignatureError("bodySHA256 does not match the body")
        return []

    def parse(self, request: InboundRequest) -> Parsed:
        form = request.form()
        event = (
            self._message(request, form) if self.kind == "messages" else self._status(request, form)
        )
        return Parsed(events=[event], ack=Ack(media_type="text/xml", body=TWIML_EMPTY))

    def _message(self, request: InboundRequest, form: list[tuple[str, str]]) -> Event:
        params = dict(form)
        sid = _required(params, "MessageSid", "SmsMessageSid", "SmsSid")
        sender, ours = _required(params, "From"), _required(params, "To")
        channel, customer = _split_address(sender)
        return Event(
            id=new_ulid(request.received_at),
            source=self.source,
            type=EventType.MESSAGE_RECEIVED,
            provider_type="message",
            dedupe_key=f"twilio:{sid}",
            channel=channel,
            contact=Contact(address=customer, name=params.get("ProfileName") or None),
            conversation_key=number_conversation(channel, customer, _split_address(ours)[1]),
            text=params.get("Body", ""),
            attachments=_media(params),
            data=_data(params, _MESSAGE_FIELDS),
            received_at=request.received_at,
            correlation_id=request.correlation_id,
        )

    def _status(self, request: InboundRequest, form: list[tuple[str, str]]) -> Event:
        params = dict(form)
        sid = _required(params, "MessageSid", "SmsSid")
        status = _required(params, "MessageStatus", "SmsStatus")
        customer_raw = _required(params, "To")
        channel, customer = _split_address(customer_raw)
        ours = params.get("From")
        return Event(
            id=new_ulid(request.received_at),
            source=self.source,
            type=EventType.MESSAGE_STATUS,
            provider_type=f"message.{status}",
            dedupe_key=f"twilio:{sid}:{status}",
            channel=channel,
            contact=Contact(address=customer),
            conversation_key=(
                number_conversation(channel, customer, _split_address(ours)[1]) if ours else None
            ),
            data={**_data(params, _STATUS_FIELDS), "status": status},
            received_at=request.received_at,
            correlation_id=request.correlation_id,
        )


_MESSAGE_FIELDS = {
    "MessageSid": "message_sid",
    "AccountSid": "account_sid",
    "To": "to",
    "From": "from",
    "MessagingServiceSid": "messaging_service_sid",
    "NumMedia": "num_media",
    "NumSegments": "num_segments",
    "OptOutType": "opt_out_type",
    "WaId": "wa_id",
    "ButtonPayload": "button_payload",
    "ButtonText": "button_text",
    "FromCountry": "from_country",
    "FromState": "from_state",
    "FromCity": "from_city",
    "Latitude": "latitude",
    "Longitude": "longitude",
    "ReferralNumMedia": "referral_num_media",
}
_STATUS_FIELDS = {
    "MessageSid": "message_sid",
    "AccountSid": "account_sid",
    "To": "to",
    "From": "from",
    "MessagingServiceSid": "messaging_service_sid",
    "ErrorCode": "error_code",
    "ErrorMessage": "error_message",
    "RawDlrDoneDate": "raw_dlr_done_date",
    "ChannelStatusMessage": "channel_status_message",
}


def _required(params: dict[str, str], *names: str) -> str:
    for name in names:
        value = params.get(name)
        if value:
            return value
    raise PayloadError(f"missing {names[0]}")


def _split_address(address: str) -> tuple[Channel, str]:
    """`whatsapp:+1555...` -> (whatsapp, +1555...); a bare number is SMS."""
    if address.startswith("whatsapp:"):
        return Channel.WHATSAPP, address[len("whatsapp:") :]
    return Channel.SMS, address


def _data(params: dict[str, str], fields: dict[str, str]) -> dict[str, Any]:
    return {fields[name]: value for name, value in params.items() if name in fields}


def _media(params: dict[str, str]) -> tuple[Attachment, ...]:
    try:
        count = int(params.get("NumMedia") or 0)
    except ValueError as exc:
        raise PayloadError("NumMedia is not a number") from exc
    return tuple(
        Attachment(url=params[f"MediaUrl{i}"], content_type=params.get(f"MediaContentType{i}"))
        for i in range(min(count, 10))
        if f"MediaUrl{i}" in params
    )

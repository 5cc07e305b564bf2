"""Hypothesis strategies for fuzzing the HTTP edge (tests/integration/test_fuzz.py).

Two families: raw material for arbitrary requests (bytes, header values, content types), and
provider-shaped payloads. The shaped ones are mostly well typed with odd values, so that
parsers go deep (a payload of the wrong shape stops at the first type check), and sometimes
anything at all.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

import httpx
from hypothesis import strategies as st

#: Header name characters (RFC 9110 tchar).
TOKEN_CHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
SIGNATURE_HEADERS = [
    *("x-twilio-signature", "x-twilio-webhooks-signature-settings"),
    *("x-slack-signature", "x-slack-request-timestamp", "stripe-signature"),
    *("webhook-id", "webhook-timestamp", "webhook-signature"),
    *("authorization", "x-request-id", "content-type"),
]
CONTENT_TYPES = [
    "application/x-www-form-urlencoded",
    "application/json",
    "application/json; charset=utf-8",
    "multipart/form-data",
    "multipart/form-data; boundary=fuzz",
    "text/plain",
]
# Headers that frame the HTTP message itself: fuzzing them tests the client, not the server.
_FRAMING = {"content-length", "transfer-encoding", "host", "connection", "expect", "upgrade", "te"}


def header_safe(raw: bytes) -> bytes:
    """Any bytes a real client can put in a header value (obs-text 0x80-0xFF included)."""
    cleaned = bytes(b if (b >= 0x20 and b != 0x7F) or b == 0x09 else 0x3F for b in raw)
    return cleaned.strip(b" \t")


TEXT = st.text(max_size=40)
#: With lone surrogates: they survive a JSON `\udxxx` escape but not UTF-8 encoding.
WILD_TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=20)
NAME = st.text(st.characters(codec=None, exclude_categories=()), min_size=1, max_size=20)
HEADER_NAME = st.sampled_from(SIGNATURE_HEADERS) | st.text(
    TOKEN_CHARS, min_size=1, max_size=24
).filter(lambda name: name.lower() not in _FRAMING)
HEADER_VALUE = st.one_of(
    st.binary(max_size=120).map(header_safe),
    TEXT.map(lambda text: header_safe(text.encode())),
    st.sampled_from([b"v0=" + b"0" * 64, b"t=1,v1=abc", b"v1,AAAA", b"Bearer x", b"Basic !!"]),
    st.integers(1_000, 16_000).map(lambda n: b"x" * n),
)
HEADERS = st.dictionaries(HEADER_NAME, HEADER_VALUE, max_size=5)
CONTENT_TYPE = st.sampled_from(CONTENT_TYPES).map(str.encode) | TEXT.map(
    lambda t: header_safe(t.encode())
)
JSON_SCALAR = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | WILD_TEXT
JSON = st.recursive(
    JSON_SCALAR,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(WILD_TEXT, inner, max_size=4),
    max_leaves=16,
)
OBJECT = st.dictionaries(WILD_TEXT, JSON, max_size=5)
QUERY = st.dictionaries(TEXT, TEXT, max_size=3).map(urlencode)


def json_bytes(value: Any, ascii_only: bool) -> bytes:
    """JSON; with `ascii_only` off, lone surrogates make it invalid UTF-8 (on purpose)."""
    return json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


def json_text(value: Any, ascii_only: bool) -> str:
    """JSON that is valid UTF-8 (signing libraries encode it): lone surrogates as escapes."""
    text = json.dumps(value, ensure_ascii=ascii_only)
    try:
        text.encode()
    except UnicodeEncodeError:
        return json.dumps(value)
    return text


def multipart(fields: dict[str, str], files: dict[str, bytes]) -> tuple[str, bytes]:
    """A multipart/form-data body as httpx encodes it: (content type, body).

    Fields go in as parts without a filename (the wire form of a plain field): httpx would
    url-encode a request with fields and no files.
    """
    parts: list[tuple[str, Any]] = [(k, (None, v.encode())) for k, v in fields.items()]
    parts += [(k, ("f.bin", data, "application/octet-stream")) for k, data in files.items()]
    if not parts:
        return "multipart/form-data; boundary=empty", b"--empty--\r\n"
    request = httpx.Request("POST", "http://127.0.0.1/", files=parts)
    return request.headers["content-type"], request.read()


BODY = st.one_of(
    st.binary(max_size=2048),
    st.dictionaries(TEXT, TEXT, max_size=6).map(lambda d: urlencode(d).encode()),
    st.builds(json_bytes, JSON, st.booleans()),
    st.sampled_from([b"", b"\xff\xfe\xfd", b"a=%ff%fe", b"{", b"[]", b"null", b'"\\ud800"']),
    st.builds(
        lambda fields, cut: multipart(fields, {})[1][:cut],
        st.dictionaries(TEXT, TEXT, min_size=1, max_size=3),
        st.integers(0, 400),
    ),
)


def shaped(
    required: dict[str, Any], optional: dict[str, Any] | None = None
) -> st.SearchStrategy[Any]:
    """Mostly the given shape (sometimes with extra keys), sometimes any JSON at all."""
    shape = st.fixed_dictionaries(required, optional=optional or {})
    extra = st.tuples(shape, OBJECT).map(lambda pair: {**pair[1], **pair[0]})
    return st.one_of(shape, shape, shape, extra, JSON)


def among(*values: Any) -> st.SearchStrategy[Any]:
    """One of the realistic values, or a name."""
    return st.sampled_from(values) | NAME


# -- Twilio (form params: text, never surrogates) -------------------------------------------

PHONE = st.sampled_from(["+15551230001", "whatsapp:+15551230001", "whatsapp:", "+", ""]) | TEXT
_TWILIO_OPTIONAL = {
    "AccountSid": TEXT,
    "Body": TEXT,
    "NumMedia": st.integers(-3, 20).map(str) | TEXT,
    "MediaUrl0": TEXT,
    "MediaContentType0": TEXT,
    "MediaUrl1": TEXT,
    "ProfileName": TEXT,
    "OptOutType": st.sampled_from(["STOP", "START", "HELP"]) | TEXT,
    "ErrorCode": st.integers(0, 99999).map(str) | TEXT,
    "SmsSid": TEXT,
    "WaId": TEXT,
}
TWILIO_MESSAGE = st.fixed_dictionaries(
    {"MessageSid": TEXT, "From": PHONE, "To": PHONE}, optional=_TWILIO_OPTIONAL
) | st.dictionaries(TEXT, TEXT, max_size=8)
TWILIO_STATUS = st.fixed_dictionaries(
    {
        "MessageSid": TEXT,
        "MessageStatus": st.sampled_from(["delivered", "failed", "undelivered", "sent"]) | TEXT,
        "To": PHONE,
    },
    optional={"From": PHONE, **_TWILIO_OPTIONAL},
) | st.dictionaries(TEXT, TEXT, max_size=8)

# -- Slack -----------------------------------------------------------------------------------

_SLACK_FILE = shaped({}, {k: NAME for k in ("id", "name", "mimetype", "url_private")})
_SLACK_INNER = shaped(
    {"type": among("message", "app_mention", "reaction_added")},
    {
        "subtype": among("bot_message", "message_changed", "file_share"),
        "user": NAME | st.fixed_dictionaries({"id": NAME}),
        "bot_id": NAME,
        "channel": NAME,
        "channel_type": among("channel", "im"),
        "text": WILD_TEXT,
        "ts": among("1700000000.000100", "0", "-1"),
        "thread_ts": among("1700000000.000100"),
        "event_ts": NAME,
        "item": shaped({}, {"channel": NAME, "ts": NAME}),
        "files": st.lists(_SLACK_FILE, max_size=2),
    },
)
SLACK_EVENT = st.one_of(
    shaped(
        {"type": st.just("event_callback"), "event_id": NAME, "event": _SLACK_INNER},
        {"event_time": st.integers(), "team_id": NAME, "api_app_id": NAME},
    ),
    shaped({"type": st.just("url_verification")}, {"challenge": WILD_TEXT}),
)
_REF = shaped({"id": NAME}, {"name": NAME, "username": NAME})
SLACK_INTERACTION = shaped(
    {"type": among("block_actions", "view_submission", "message_action")},
    {
        "trigger_id": NAME,
        "user": _REF,
        "team": _REF,
        "channel": _REF,
        "container": shaped({}, {k: NAME for k in ("type", "message_ts", "channel_id")}),
        "message": shaped({}, {"ts": NAME, "thread_ts": NAME}),
        "response_url": NAME,
        "actions": st.lists(
            shaped(
                {"action_id": among("claim", "resolve", "return_to_bot")},
                {"value": WILD_TEXT, "block_id": NAME, "type": among("button")},
            ),
            max_size=3,
        ),
    },
)

# -- Stripe and custom (Standard Webhooks) ---------------------------------------------------

_INVOICE = shaped(
    {"id": NAME, "object": among("invoice", "customer")},
    {
        "customer_email": among("ann@example.com", "not-an-email"),
        "customer_phone": among("+15551230001"),
        "customer_name": NAME,
        "email": NAME,
        "phone": NAME,
        "amount_due": st.integers(),
    },
)
STRIPE_EVENT = shaped(
    {
        "id": NAME,
        "type": among("invoice.payment_failed", "customer.created", "charge.succeeded"),
        "created": st.integers(),
        "data": shaped({"object": _INVOICE | OBJECT}, {"previous_attributes": OBJECT}),
    },
    {"object": st.just("event"), "livemode": st.booleans(), "api_version": NAME},
)
CUSTOM_PAYLOAD = shaped(
    {"type": among("customer.updated")}, {"timestamp": NAME | st.integers(), "data": JSON}
)

# -- Email (Mailgun, SendGrid) ---------------------------------------------------------------

EMAIL = st.sampled_from(["Ann <ann@example.com>", "ann@example.com", "<>", "@", ""]) | st.emails()
_LINE = st.text(st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=30)


def _mime(sender: str, subject: str, body: str, attachment: bytes | None) -> str:
    """A MIME message written by hand, so it may break the rules a library would enforce."""
    head = f"From: {sender}\r\nTo: support@example.com\r\nSubject: {subject}\r\n"
    if attachment is None:
        return head + f"Message-ID: <{subject}@x>\r\n\r\n{body}"
    return (
        head + 'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n'
        f"Content-Type: text/plain\r\n\r\n{body}\r\n--b\r\n"
        'Content-Type: application/pdf\r\nContent-Disposition: attachment; filename="a.pdf"\r\n'
        f"Content-Transfer-Encoding: base64\r\n\r\n{attachment.hex()}\r\n--b--\r\n"
    )


MIME = st.builds(_mime, EMAIL, _LINE, TEXT, st.none() | st.binary(max_size=64)) | TEXT
_JSON_FIELD = st.builds(json.dumps, JSON) | TEXT
EMAIL_FIELDS = st.fixed_dictionaries(
    {},
    optional={
        "from": EMAIL,
        "sender": EMAIL,
        "recipient": EMAIL,
        "to": EMAIL,
        "cc": EMAIL,
        "subject": TEXT,
        "body-plain": TEXT,
        "stripped-text": TEXT,
        "body-html": TEXT,
        "text": TEXT,
        "html": TEXT,
        "Message-Id": TEXT,
        "message-headers": st.lists(st.tuples(_LINE, _LINE), max_size=4).map(json.dumps) | TEXT,
        "headers": st.lists(st.tuples(_LINE, _LINE), max_size=4).map(
            lambda pairs: "\n".join(f"{k}: {v}" for k, v in pairs)
        ),
        "envelope": st.fixed_dictionaries(
            {}, optional={"from": EMAIL | JSON, "to": st.lists(EMAIL) | JSON}
        ).map(json.dumps)
        | TEXT,
        "charsets": st.dictionaries(TEXT, among("utf-8", "iso-8859-1", "x-unknown")).map(json.dumps)
        | TEXT,
        "attachment-count": st.integers(-1, 3).map(str) | TEXT,
        "attachments": st.integers(-1, 3).map(str) | TEXT,
        "attachment-info": _JSON_FIELD,
        "body-mime": MIME,
        "email": MIME,
    },
)
EMAIL_FILES = st.dictionaries(
    st.sampled_from(["attachment-1", "attachment1", "email", "body-mime"]) | TEXT,
    st.binary(max_size=256),
    max_size=2,
)

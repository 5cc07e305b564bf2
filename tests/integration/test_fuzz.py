"""Hypothesis fuzzing of every endpoint through real HTTP on loopback: never a 5xx.

Two kinds of input (strategies in tests/fuzz_payloads.py): arbitrary requests (bodies, content
types, garbage signature headers, odd and huge header values, invalid UTF-8, random paths and
queries), which must never get a 5xx; and correctly signed requests with arbitrary payloads,
signed by each provider's official signing code, which must be answered 2xx or 400 (never 401:
that would be a verifier disagreeing with the provider's library). Since a parser refusing
everything would pass those, valid payloads are generated too (built as tests/cases/ builds
each provider's webhook, with generated ids, texts and data): each must get a 2xx and be read
back from the store with what went in. One live server serves the module; its store is
healthy, so a 503 is a failure as well.
"""

from __future__ import annotations

import json
import logging
import string
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from slack_sdk.signature import SignatureVerifier
from standardwebhooks import Webhook
from stripe import WebhookSignature
from twilio.request_validator import RequestValidator

from router.config import ServerConfig
from tests import fuzz_payloads as p
from tests.cases import ALL_CASES, ProviderCase
from tests.cases import custom as custom_case
from tests.cases import slack as slack_case
from tests.cases import stripe as stripe_case
from tests.cases import twilio as twilio_case
from tests.cases.email import credentials, mailgun_signature
from tests.support import ADMIN_TOKEN, CUSTOM_SOURCE, PUBLIC_URL, SECRETS, LiveServer, live_server

#: Examples per test in `make test` (the suite's time budget); raise it for a longer hunt.
FUZZ = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
WEBHOOKS = [
    "/webhooks/twilio/messages",
    "/webhooks/twilio/status",
    "/webhooks/slack/events",
    "/webhooks/slack/interactions",
    "/webhooks/stripe",
    "/webhooks/email/mailgun",
    "/webhooks/email/sendgrid",
    f"/webhooks/custom/{CUSTOM_SOURCE}",
    "/webhooks/custom/not-configured",
]


@pytest.fixture(scope="module", autouse=True)
def _quiet_http_client_log() -> Iterator[None]:
    """httpx logs every request at INFO: thousands of lines per run."""
    logger = logging.getLogger("httpx")
    level = logger.level
    logger.setLevel(logging.WARNING)
    yield
    logger.setLevel(level)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with live_server(tmp_path_factory.mktemp("fuzz")) as running:
        yield running


@pytest.fixture(scope="module")
def client(live: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live.base_url, timeout=30) as http:
        yield http


def send(client: httpx.Client, method: str, path: str, **kwargs: Any) -> httpx.Response:
    response = client.request(method, path, **kwargs)
    status = response.status_code
    assert status < 500, f"{method} {path} -> {status} {response.text[:300]!r}"
    return response


def assert_signed_ok(response: httpx.Response) -> None:
    """A correctly signed request is understood (2xx) or quarantined (400); nothing else."""
    status = response.status_code
    assert 200 <= status < 300 or status == 400, f"{status} {response.text[:300]!r}"
    if status == 400:
        assert response.json()["error"].startswith("malformed payload")


def now() -> int:
    return int(time.time())


# -- arbitrary requests ---------------------------------------------------------------------


@pytest.mark.parametrize("path", WEBHOOKS)
@FUZZ
@given(body=p.BODY, content_type=p.CONTENT_TYPE, headers=p.HEADERS, query=p.QUERY)
def test_arbitrary_webhook_requests_never_5xx(
    client: httpx.Client,
    path: str,
    body: bytes,
    content_type: bytes,
    headers: dict[str, bytes],
    query: str,
) -> None:
    sent = [(name.encode(), value) for name, value in headers.items() if name != "content-type"]
    sent.append((b"content-type", content_type))
    target = path + ("?" + query if query else "")
    response = send(client, "POST", target, content=body, headers=sent)
    if response.status_code >= 400:
        assert response.json()["error"]


@FUZZ
@given(
    path=st.text(p.TOKEN_CHARS + "/%.", max_size=40),
    method=st.sampled_from(["GET", "PUT", "DELETE", "PATCH", "POST"]),
    body=p.BODY,
)
def test_arbitrary_paths_and_methods_never_5xx(
    client: httpx.Client, path: str, method: str, body: bytes
) -> None:
    send(client, method, "/webhooks/" + path, content=body if method != "GET" else None)


@pytest.mark.parametrize("path", ["/readyz", "/healthz", "/metrics", "/api/events"])
@FUZZ
@given(
    params=st.dictionaries(
        st.sampled_from(["limit", "since", "status", "source", "type"]) | p.TEXT,
        st.one_of(
            p.TEXT,
            st.integers().map(str),
            st.datetimes(timezones=st.timezones()).map(datetime.isoformat),
            st.sampled_from(["received", "ignored", "24h", "0s", "99999999w", "-1", "1e3"]),
        ),
        max_size=4,
    ),
    headers=p.HEADERS,
    authorised=st.booleans(),
)
def test_admin_and_health_endpoints_never_5xx(
    client: httpx.Client,
    path: str,
    params: dict[str, str],
    headers: dict[str, bytes],
    authorised: bool,
) -> None:
    sent = {name: value for name, value in headers.items() if name != "authorization"}
    if authorised:
        sent["authorization"] = f"Bearer {ADMIN_TOKEN}".encode()
    response = send(client, "GET", path, params=params, headers=sent)
    header_bytes = sum(len(name) + len(value) + 4 for name, value in sent.items())
    if header_bytes > ServerConfig().max_header_bytes:
        assert response.status_code == 431
    elif header_bytes > ServerConfig().max_header_bytes - 2048:  # with the request line: either
        assert response.status_code < 500
    elif path in ("/readyz", "/healthz"):
        assert response.status_code == 200
    elif authorised:
        assert response.status_code in (200, 400)
    else:
        assert response.status_code == 401


@FUZZ
@given(event_id=st.text(max_size=60), authorised=st.booleans())
def test_event_by_arbitrary_id_never_5xx(
    client: httpx.Client, event_id: str, authorised: bool
) -> None:
    headers = {"authorization": f"Bearer {ADMIN_TOKEN}"} if authorised else {}
    response = send(client, "GET", "/api/events/" + quote(event_id, safe=""), headers=headers)
    assert response.status_code in (200, 401, 404), response.text


# -- correctly signed, arbitrary payloads ---------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "params"), [("messages", p.TWILIO_MESSAGE), ("status", p.TWILIO_STATUS)]
)
@FUZZ
@given(data=st.data())
def test_signed_twilio_with_arbitrary_params(
    client: httpx.Client, kind: str, params: st.SearchStrategy[dict[str, str]], data: st.DataObject
) -> None:
    form = data.draw(params)
    path = f"/webhooks/twilio/{kind}"
    signature = RequestValidator(SECRETS["twilio"][0]).compute_signature(PUBLIC_URL + path, form)
    headers = {"content-type": "application/x-www-form-urlencoded", "x-twilio-signature": signature}
    assert_signed_ok(send(client, "POST", path, content=urlencode(form), headers=headers))


def slack_signed(path: str, body: bytes, content_type: str) -> dict[str, Any]:
    stamp = str(now())
    verifier = SignatureVerifier(SECRETS["slack"][0])
    headers = {
        "content-type": content_type,
        "x-slack-request-timestamp": stamp,
        "x-slack-signature": verifier.generate_signature(timestamp=stamp, body=body),
    }
    return {"content": body, "headers": headers}


@FUZZ
@given(payload=p.SLACK_EVENT, ascii_only=st.booleans())
def test_signed_slack_event_with_arbitrary_json(
    client: httpx.Client, payload: Any, ascii_only: bool
) -> None:
    body = p.json_text(payload, ascii_only).encode()
    request = slack_signed("/webhooks/slack/events", body, "application/json")
    assert_signed_ok(send(client, "POST", "/webhooks/slack/events", **request))


@FUZZ
@given(
    form=st.one_of(
        st.tuples(p.SLACK_INTERACTION, st.booleans()).map(
            lambda pair: {"payload": p.json_text(*pair)}
        ),
        st.dictionaries(p.TEXT, p.TEXT, max_size=4),
    )
)
def test_signed_slack_interaction_with_arbitrary_payload(
    client: httpx.Client, form: dict[str, str]
) -> None:
    path = "/webhooks/slack/interactions"
    body = urlencode(form).encode()
    request = slack_signed(path, body, "application/x-www-form-urlencoded")
    assert_signed_ok(send(client, "POST", path, **request))


@FUZZ
@given(payload=p.STRIPE_EVENT, ascii_only=st.booleans())
def test_signed_stripe_with_arbitrary_json(
    client: httpx.Client, payload: Any, ascii_only: bool
) -> None:
    text = p.json_text(payload, ascii_only)
    header = WebhookSignature.generate_signature_header(text, SECRETS["stripe"][0], now())
    headers = {"content-type": "application/json", "stripe-signature": header}
    assert_signed_ok(send(client, "POST", "/webhooks/stripe", content=text, headers=headers))


@FUZZ
@given(
    payload=p.CUSTOM_PAYLOAD,
    msg_id=st.text(p.TOKEN_CHARS, min_size=1, max_size=40),
    ascii_only=st.booleans(),
)
def test_signed_custom_source_with_arbitrary_json(
    client: httpx.Client, payload: Any, msg_id: str, ascii_only: bool
) -> None:
    body = p.json_text(payload, ascii_only)
    stamp = now()
    signature = Webhook(SECRETS["custom"][0]).sign(msg_id, datetime.fromtimestamp(stamp, UTC), body)
    headers = {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(stamp),
        "webhook-signature": signature,
    }
    path = f"/webhooks/custom/{CUSTOM_SOURCE}"
    assert_signed_ok(send(client, "POST", path, content=body, headers=headers))


@FUZZ
@given(fields=p.EMAIL_FIELDS, files=p.EMAIL_FILES, as_multipart=st.booleans())
def test_signed_mailgun_with_arbitrary_fields(
    client: httpx.Client, fields: dict[str, str], files: dict[str, bytes], as_multipart: bool
) -> None:
    stamp, token = str(now()), uuid.uuid4().hex
    key = SECRETS["mailgun"][0]
    signed = {**fields, "timestamp": stamp, "token": token}
    signed["signature"] = mailgun_signature(key, stamp, token)
    if as_multipart:
        content_type, body = p.multipart(signed, files)
    else:
        content_type, body = "application/x-www-form-urlencoded", urlencode(signed).encode()
    headers = {"content-type": content_type}
    response = send(client, "POST", "/webhooks/email/mailgun", content=body, headers=headers)
    assert_signed_ok(response)


@FUZZ
@given(fields=p.EMAIL_FIELDS, files=p.EMAIL_FILES)
def test_signed_sendgrid_with_arbitrary_fields(
    client: httpx.Client, fields: dict[str, str], files: dict[str, bytes]
) -> None:
    content_type, body = p.multipart(fields, files)
    response = send(
        client,
        "POST",
        "/webhooks/email/sendgrid",
        content=body,
        headers={"content-type": content_type},
        auth=credentials(SECRETS["sendgrid"][0]),
    )
    assert_signed_ok(response)


# -- correctly signed, valid payloads: understood, stored, read back ------------------------
#
# The tests above accept 400 for any signed example, so a parser refusing every valid input
# would pass them. Here each payload is valid by construction (tests/cases/ builds each
# provider's webhook, signed with its official code): it must get a 2xx, and the event must
# be stored and read back through the admin API with the fields that went in.

AUTH = {"authorization": f"Bearer {ADMIN_TOKEN}"}
UNIQUE = st.text(string.ascii_letters + string.digits + "-_", min_size=1, max_size=24)
#: What people type: any characters but lone surrogates (not UTF-8), at least one visible.
MESSAGE = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=300
).filter(lambda text: text.strip() != "")
#: JSON a provider sends: no lone surrogates, integers within what JSON parsers keep exactly.
VALID_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(codec="utf-8"), max_size=30),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(st.characters(codec="utf-8"), max_size=12), inner, max_size=4)
    ),
    max_leaves=16,
)
VALID_OBJECT = st.dictionaries(st.text(st.characters(codec="utf-8"), max_size=12), VALID_JSON)
EVENT_TYPE = st.from_regex(r"[a-z][a-z_]{0,15}(\.[a-z][a-z_]{0,15}){1,2}", fullmatch=True)


def fresh(unique: str) -> str:
    """`unique` made distinct per example: hypothesis repeats values, a repeat is a duplicate."""
    return f"{unique}{uuid.uuid4().hex[:8]}"


def stored(client: httpx.Client, response: httpx.Response, source: str, key: str) -> Any:
    """The event a valid delivery made: 2xx, then the newest event of `source` is it."""
    assert 200 <= response.status_code < 300, f"{response.status_code} {response.text[:300]!r}"
    listed = client.get("/api/events", params={"source": source, "limit": 1}, headers=AUTH)
    assert listed.status_code == 200, listed.text
    [event] = listed.json()
    assert event["dedupe_key"] == key, event
    one = client.get(f"/api/events/{event['id']}", headers=AUTH)
    assert one.status_code == 200 and one.json()["dedupe_key"] == key
    return event


def assert_fields(event: dict[str, Any], expected: dict[str, Any]) -> None:
    for name, value in expected.items():
        assert event[name] == value, (name, event[name], value)


@pytest.mark.parametrize("case", ALL_CASES, ids=lambda case: case.id)
@settings(FUZZ, max_examples=25)
@given(unique=UNIQUE)
def test_signed_valid_requests_of_every_provider_are_stored(
    client: httpx.Client, case: ProviderCase, unique: str
) -> None:
    key = fresh(unique)
    secret = SECRETS["custom" if case.source == CUSTOM_SOURCE else case.source][0]
    request = case.sign(secret, key, now())
    response = send(
        client,
        "POST",
        request.path,
        content=request.body,
        headers=request.headers,
        auth=request.auth,
    )
    event = stored(client, response, case.source, case.dedupe_key(key))
    assert_fields(event, case.expected(key))


@FUZZ
@given(unique=UNIQUE, text=MESSAGE)
def test_signed_sms_with_any_text_is_stored_verbatim(
    client: httpx.Client, unique: str, text: str
) -> None:
    key = fresh(unique)
    params = {**twilio_case.message_params(key), "Body": text}
    request = twilio_case.signed(
        PUBLIC_URL, "/webhooks/twilio/messages", params, SECRETS["twilio"][0]
    )
    response = send(client, "POST", request.path, content=request.body, headers=request.headers)
    event = stored(client, response, "twilio", f"twilio:SM{key}")
    assert event["text"] == text and event["contact"]["address"] == params["From"]


@FUZZ
@given(unique=UNIQUE, text=MESSAGE)
def test_signed_slack_message_with_any_text_is_stored_verbatim(
    client: httpx.Client, unique: str, text: str
) -> None:
    key = fresh(unique)
    ts = slack_case.message_ts(key)
    body = slack_case.callback(f"Ev{key}", slack_case.user_message(key, text=text, ts=ts))
    request = slack_case.signed(
        slack_case.EVENTS_PATH, body, "application/json", SECRETS["slack"][0], now()
    )
    response = send(client, "POST", request.path, content=request.body, headers=request.headers)
    dedupe_key = f"slack:{slack_case.CHANNEL}:{ts}"
    assert stored(client, response, "slack", dedupe_key)["text"] == text


@FUZZ
@given(unique=UNIQUE, event_type=EVENT_TYPE, extra=VALID_OBJECT, ascii_only=st.booleans())
def test_signed_stripe_event_with_any_object_is_stored(
    client: httpx.Client, unique: str, event_type: str, extra: dict[str, Any], ascii_only: bool
) -> None:
    key = fresh(unique)
    obj = {**extra, **stripe_case.invoice(key)}
    body = stripe_case.stripe_event(f"evt_{key}", event_type, obj)
    if not ascii_only:
        body = json.dumps(json.loads(body), ensure_ascii=False)
    request = stripe_case.signed(body, SECRETS["stripe"][0], now())
    response = send(client, "POST", request.path, content=request.body, headers=request.headers)
    event = stored(client, response, "stripe", f"stripe:evt_{key}")
    assert_fields(event, {"type": event_type, "provider_type": event_type, "data": obj})


@FUZZ
@given(unique=UNIQUE, event_type=EVENT_TYPE, data=VALID_OBJECT, ascii_only=st.booleans())
def test_signed_custom_event_with_any_data_is_stored(
    client: httpx.Client, unique: str, event_type: str, data: dict[str, Any], ascii_only: bool
) -> None:
    key = fresh(unique)
    payload = {"type": event_type, "timestamp": "2026-11-23T14:59:00Z", "data": data}
    body = json.dumps(payload, ensure_ascii=ascii_only)
    request = custom_case.signed(SECRETS["custom"][0], f"msg_{key}", now(), body)
    response = send(client, "POST", request.path, content=request.body, headers=request.headers)
    event = stored(client, response, CUSTOM_SOURCE, f"{CUSTOM_SOURCE}:msg_{key}")
    assert_fields(event, {"type": event_type, "data": payload})

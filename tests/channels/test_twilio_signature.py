"""Our hand-written X-Twilio-Signature check against twilio's own `RequestValidator`.

channels/twilio.py computes the signature once (the port variant only on failure) instead of
calling `RequestValidator.validate`, which signs two URLs every time. These tests prove the
shortcut accepts exactly the requests the library accepts, over generated requests and over the
library's own published test vectors.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlencode, urlparse

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from litestar.datastructures import MultiDict
from twilio.request_validator import (
    RequestValidator,
    add_port,
    get_signature_algorithm,
    remove_port,
)

from channels.base import InboundRequest, SignatureError
from channels.twilio import TwilioAdapter

FORM = "application/x-www-form-urlencoded"
JSON = "application/json"
SETTINGS = "X-Twilio-Webhooks-Signature-Settings"


def request(
    url: str,
    body: bytes,
    headers: dict[str, str],
    content_type: str = FORM,
) -> InboundRequest:
    return InboundRequest(
        body=body,
        headers={name.lower(): value for name, value in headers.items()},
        url=url,
        content_type=content_type,
        received_at=datetime(2026, 11, 23, 15, 0, tzinfo=UTC),
        correlation_id="test",
    )


def accepts(adapter: TwilioAdapter, inbound: InboundRequest) -> bool:
    try:
        adapter.verify(inbound)
    except SignatureError:
        return False
    return True


# -- generated requests ---------------------------------------------------------------------

text = st.text(max_size=12)
names = st.text(min_size=1, max_size=8)
tokens = st.text(min_size=1, max_size=40)
label = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-",
    min_size=1,
    max_size=10,
)
segment = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~%", max_size=10
)
ALGORITHMS = ["HMAC_SHA1", "HMAC_SHA256"]
SETTINGS_HEADERS = [
    None,
    "",
    "algorithm=HMAC_SHA256",
    "key=webhooks_sharedkey_1,algorithm=HMAC_SHA256",
    "key=webhooks_sharedkey_1, algorithm = hmac_sha256",
    "key=webhooks_sharedkey_1,algorithm=HMAC_SHA1",
    "algorithm=HMAC_SHA512",
    "key=webhooks_sharedkey_1",
]


@st.composite
def urls(draw: st.DrawFn) -> str:
    """http/https URLs with no port, a default port or 8080/1234, a path and maybe a query.

    No user-info or IPv6 hosts: the library's `remove_port` cuts the netloc at the first `:`,
    which mangles those, and Twilio never calls such URLs.
    """
    scheme = draw(st.sampled_from(["https", "http", "HTTPS"]))
    host = ".".join(draw(st.lists(label, min_size=1, max_size=3)))
    port = draw(st.sampled_from([None, 80, 443, 8080, 1234]))
    netloc = host if port is None else f"{host}:{port}"
    path = "/" + "/".join(draw(st.lists(segment, max_size=4)))
    query = draw(st.one_of(st.none(), st.just(""), st.lists(st.tuples(names, text), max_size=3)))
    if query is None:
        return f"{scheme}://{netloc}{path}"
    return f"{scheme}://{netloc}{path}?{urlencode(query) if query else ''}"


@st.composite
def form_params(draw: st.DrawFn) -> list[tuple[str, str]]:
    """Pairs with unicode and empty values, names repeated with the same or another value."""
    pool = draw(st.lists(names, min_size=1, max_size=5, unique=True))
    pairs = draw(st.lists(st.tuples(st.sampled_from(pool), text), max_size=8))
    if pairs and draw(st.booleans()):
        pairs.append(draw(st.sampled_from(pairs)))  # an identical repeat
    return pairs


@dataclass(frozen=True)
class Scenario:
    token: str
    url: str
    content_type: str
    body: bytes
    #: What the library is given: the form as a MultiDict, or the JSON body as text.
    library_params: MultiDict[str] | str
    settings_header: str | None
    signature: str


FAULTS = [None, None, None, None, "token", "algorithm", "url", "params", "signature", "body"]


def _signing_url(draw: st.DrawFn, url: str, fault: str | None) -> str:
    """The URL as sent, or with the port added or removed (Twilio signs any of them)."""
    if fault == "url":
        return url + "x"
    parsed = urlparse(url)
    return draw(st.sampled_from([url, add_port(parsed), remove_port(parsed)]))


def _json_request(draw: st.DrawFn, url: str, fault: str | None) -> tuple[str, bytes, str]:
    body_text = json.dumps({"Body": draw(text)}, ensure_ascii=False)
    body_hash = hashlib.sha256(body_text.encode()).hexdigest()
    if fault == "body":
        body_hash = draw(st.sampled_from([body_hash[::-1], "0" * 64, body_hash.upper()]))
    joiner = "" if url.endswith("?") else ("&" if "?" in url else "?")
    return url + joiner + urlencode({"bodySHA256": body_hash}), body_text.encode(), body_text


def _form_request(
    draw: st.DrawFn, url: str, fault: str | None
) -> tuple[str, bytes, MultiDict[str], MultiDict[str]]:
    pairs = draw(form_params())
    if draw(st.integers(0, 9)) == 0:  # a form body whose URL happens to carry bodySHA256
        url += ("&" if "?" in url else "?") + "bodySHA256=" + "0" * 64
    signed = pairs
    if fault in ("params", "body"):  # signed over other params than those sent
        signed = [*pairs[:-1], (pairs[-1][0], pairs[-1][1] + "x")] if pairs else [("A", "")]
    return url, urlencode(pairs).encode(), MultiDict(pairs), MultiDict(signed)


def _signature(draw: st.DrawFn, case: Scenario, signed: MultiDict[str], fault: str | None) -> str:
    algorithm = get_signature_algorithm(case.settings_header).upper()
    if fault == "algorithm" or algorithm not in ALGORITHMS:
        algorithm = draw(st.sampled_from(ALGORITHMS))
    token = case.token + "x" if fault == "token" else case.token
    signer = RequestValidator(token)
    signature = signer.compute_signature(_signing_url(draw, case.url, fault), signed, algorithm)
    if fault == "signature":
        return draw(st.sampled_from([signature + " ", " " + signature, signature[:-2], ""]))
    return signature


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    """A request, signed correctly or with one fault; the library decides which it is."""
    fault = draw(st.sampled_from(FAULTS))
    url = draw(urls())
    if draw(st.booleans()):  # JSON body signed through ?bodySHA256=
        url, body, library_params = _json_request(draw, url, fault)
        content_type, signed = JSON, MultiDict[str]([])
    else:
        url, body, library_params, signed = _form_request(draw, url, fault)
        content_type = FORM
    header = draw(st.sampled_from(SETTINGS_HEADERS))
    case = Scenario(
        token=draw(tokens),
        url=url,
        content_type=content_type,
        body=body,
        library_params=library_params,
        settings_header=header,
        signature="",
    )
    return dataclasses.replace(case, signature=_signature(draw, case, signed, fault))


def library_accepts(case: Scenario) -> bool:
    algorithm = get_signature_algorithm(case.settings_header)
    validator = RequestValidator(case.token)
    return bool(validator.validate(case.url, case.library_params, case.signature, algorithm))


def adapter_accepts(case: Scenario) -> bool:
    headers = {"X-Twilio-Signature": case.signature}
    if case.settings_header is not None:
        headers[SETTINGS] = case.settings_header
    inbound = request(case.url, case.body, headers, case.content_type)
    return accepts(TwilioAdapter([case.token], "messages"), inbound)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_adapter_accepts_exactly_what_the_library_accepts(case: Scenario) -> None:
    assert adapter_accepts(case) == library_accepts(case), case


@example(port=None, scheme="https", algorithm="HMAC_SHA1")
@given(
    port=st.sampled_from([None, 80, 443, 8080]),
    scheme=st.sampled_from(["http", "https"]),
    algorithm=st.sampled_from(ALGORITHMS),
)
def test_correctly_signed_requests_are_accepted(
    port: int | None, scheme: str, algorithm: str
) -> None:
    """The common case, spelled out: whatever the port form, a true signature passes."""
    netloc = "hooks.example.com" + (f":{port}" if port else "")
    url = f"{scheme}://{netloc}/webhooks/twilio/messages"
    params = {"MessageSid": "SM1", "Body": "héllo ✓", "From": "+15551230001", "Empty": ""}
    for signed_url in (url, add_port(urlparse(url)), remove_port(urlparse(url))):
        signature = RequestValidator("tok").compute_signature(signed_url, params, algorithm)
        headers = {"X-Twilio-Signature": signature, SETTINGS: f"algorithm={algorithm}"}
        assert accepts(
            TwilioAdapter(["tok"], "messages"), request(url, urlencode(params).encode(), headers)
        )


# -- twilio-python's own test vectors (tests/unit/test_request_validator.py) -----------------

VECTOR_TOKEN = "12345"
VECTOR_URL = "https://mycompany.com/myapp.php?foo=1&bar=2"
VECTOR_PARAMS = {
    "CallSid": "CA1234567890ABCDE",
    "Digits": "1234",
    "From": "+14158675309",
    "To": "+18005551212",
    "Caller": "+14158675309",
}
VECTOR_BODY = '{"property": "value", "boolean": true}'
VECTOR_BODY_HASH = "0a1ff7634d9ab3b95db5c9a2dfe9416e41502b283a80c7cf19632632f96e6620"


def vector_adapter() -> TwilioAdapter:
    return TwilioAdapter([VECTOR_TOKEN], "messages")


def form_request(url: str, pairs: list[tuple[str, str]], signature: str) -> InboundRequest:
    return request(url, urlencode(pairs).encode(), {"X-Twilio-Signature": signature})


@pytest.mark.parametrize(
    ("url", "signature"),
    [
        pytest.param(VECTOR_URL, "RSOYDt4T1cUTdK1PDd93/VVr8B8=", id="plain"),
        pytest.param(
            VECTOR_URL.replace(".com", ".com:1234"),
            "RSOYDt4T1cUTdK1PDd93/VVr8B8=",
            id="https-removes-port",
        ),
        pytest.param(
            VECTOR_URL.replace(".com", ".com:1234").replace("https", "http"),
            "Zmvh+3yNM1Phv2jhDCwEM3q5ebU=",
            id="http-with-port-1234",
        ),
        pytest.param(VECTOR_URL, "kvajT1Ptam85bY51eRf/AJRuM3w=", id="https-adds-port-443"),
        pytest.param(
            VECTOR_URL.replace("https", "http"),
            "0ZXoZLH/DfblKGATFgpif+LLRf4=",
            id="http-adds-port-80",
        ),
    ],
)
def test_library_vectors_for_form_params(url: str, signature: str) -> None:
    inbound = form_request(url, list(VECTOR_PARAMS.items()), signature)
    vector_adapter().verify(inbound)
    assert RequestValidator(VECTOR_TOKEN).validate(url, VECTOR_PARAMS, signature)


def test_library_vector_for_repeated_params() -> None:
    pairs = [("Sid", "CA123"), ("SidAccount", "AC123"), ("Digits", "5678"), ("Digits", "1234")]
    vector_adapter().verify(form_request(VECTOR_URL, pairs, "IK+Dwps556ElfBT0I3Rgjkr1wJU="))


def test_library_vector_for_a_json_body() -> None:
    assert hashlib.sha256(VECTOR_BODY.encode()).hexdigest() == VECTOR_BODY_HASH
    url = f"{VECTOR_URL}&bodySHA256={VECTOR_BODY_HASH}"
    headers = {"X-Twilio-Signature": "a9nBmqA0ju/hNViExpshrM61xv4="}
    vector_adapter().verify(request(url, VECTOR_BODY.encode(), headers, JSON))
    tampered = VECTOR_BODY.replace("true", "false").encode()
    assert not accepts(vector_adapter(), request(url, tampered, headers, JSON))


def test_library_vector_signed_with_hmac_sha256() -> None:
    """The vectors predate HMAC_SHA256; the same request signed by the library with it."""
    signature = RequestValidator(VECTOR_TOKEN).compute_signature(
        VECTOR_URL, VECTOR_PARAMS, "HMAC_SHA256"
    )
    headers = {"X-Twilio-Signature": signature, SETTINGS: "key=k1,algorithm=HMAC_SHA256"}
    inbound = request(VECTOR_URL, urlencode(VECTOR_PARAMS).encode(), headers)
    vector_adapter().verify(inbound)
    del headers[SETTINGS]  # same signature, but announced as the default HMAC_SHA1
    assert not accepts(vector_adapter(), request(VECTOR_URL, inbound.body, headers))


# -- secrets and malformed requests ---------------------------------------------------------


def signed_form(token: str, url: str = VECTOR_URL) -> InboundRequest:
    signature = RequestValidator(token).compute_signature(url, VECTOR_PARAMS)
    return form_request(url, list(VECTOR_PARAMS.items()), signature)


def test_rotation_accepts_either_active_token() -> None:
    adapter = TwilioAdapter(["current", "rotated-in"], "messages")
    adapter.verify(signed_form("current"))
    adapter.verify(signed_form("rotated-in"))


def test_wrong_token_is_refused() -> None:
    with pytest.raises(SignatureError, match="does not match"):
        TwilioAdapter(["current", "rotated-in"], "messages").verify(signed_form("retired"))


@pytest.mark.parametrize("value", [None, ""])
def test_missing_signature_header_is_refused(value: str | None) -> None:
    headers = {} if value is None else {"X-Twilio-Signature": value}
    inbound = request(VECTOR_URL, urlencode(VECTOR_PARAMS).encode(), headers)
    with pytest.raises(SignatureError, match="missing"):
        vector_adapter().verify(inbound)


def test_non_utf8_form_body_is_a_signature_error() -> None:
    signature = RequestValidator(VECTOR_TOKEN).compute_signature(VECTOR_URL, {})
    inbound = request(VECTOR_URL, b"Body=\xff\xfe", {"X-Twilio-Signature": signature})
    with pytest.raises(SignatureError):
        vector_adapter().verify(inbound)


def test_unsupported_algorithm_is_refused() -> None:
    inbound = signed_form(VECTOR_TOKEN)
    headers = {**inbound.headers, SETTINGS.lower(): "algorithm=HMAC_SHA512"}
    with pytest.raises(SignatureError, match="unsupported"):
        vector_adapter().verify(request(VECTOR_URL, inbound.body, headers))

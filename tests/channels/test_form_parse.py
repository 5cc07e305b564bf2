"""`parse_form` (the hot-path form parser) and `form_fields` against the standard library,
and the cap on form fields."""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import parse_qsl, urlencode

import pytest
from hypothesis import given
from hypothesis import strategies as st

from channels.base import (
    MAX_FORM_FIELDS,
    InboundRequest,
    LimitExceeded,
    form_fields,
    parse_form,
)

#: Characters that matter to url-encoded parsing, plus some that do not.
_TRICKY = st.sampled_from(
    [*"&=%+;#? aZ09\x7f", "%2", "%zz", "%20", "%2B", "%E2%82%AC", "%C3", "%A9", "%FF", "é", "€"]
)


@given(st.lists(_TRICKY, max_size=30).map("".join))
def test_equals_parse_qsl_on_arbitrary_text(text: str) -> None:
    assert parse_form(text) == parse_qsl(text, keep_blank_values=True)


@given(st.lists(st.tuples(st.text(), st.text()), max_size=8))
def test_round_trips_encoded_pairs(pairs: list[tuple[str, str]]) -> None:
    text = urlencode(pairs)
    assert parse_form(text) == parse_qsl(text, keep_blank_values=True)


def _request(body: bytes) -> InboundRequest:
    return InboundRequest(
        body=body,
        headers={},
        url="https://switchboard.example.com/webhooks/twilio/messages",
        content_type="application/x-www-form-urlencoded",
        received_at=datetime(2026, 11, 27, tzinfo=UTC),
        correlation_id="test",
    )


@pytest.mark.parametrize("head", [b"", b"x" * 70_000])  # the cap holds past the scanned head
def test_a_form_may_have_at_most_max_form_fields_fields(head: bytes) -> None:
    fields = [b"f%d=" % i for i in range(MAX_FORM_FIELDS)]
    assert len(_request(b"a=" + head + b"&" + b"&".join(fields[1:])).form()) == MAX_FORM_FIELDS
    with pytest.raises(LimitExceeded, match="more than 1000 fields"):
        _request(b"a=" + head + b"&" + b"&".join(fields)).form()


@given(st.lists(st.tuples(st.text(), st.text()), max_size=8), st.text(min_size=1))
def test_form_fields_finds_what_parse_qsl_finds_first(
    pairs: list[tuple[str, str]], wanted: str
) -> None:
    body = urlencode(pairs).encode()
    expected = dict(reversed(parse_qsl(body.decode(), keep_blank_values=True)))
    found = form_fields(body, frozenset({wanted}), max_value=10_000)
    assert found == ({wanted: expected[wanted]} if wanted in expected else {})


def test_form_fields_leaves_out_huge_values_without_decoding_them() -> None:
    body = b"token=abc&body-plain=" + b"%41" * 1_000_000 + b"&signature=" + b"f" * 5000
    assert form_fields(body, frozenset({"token", "signature", "body-plain"})) == {"token": "abc"}

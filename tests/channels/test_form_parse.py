"""`parse_form` (the hot-path form parser) against the standard library it replaces."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode

from hypothesis import given
from hypothesis import strategies as st

from channels.base import parse_form

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

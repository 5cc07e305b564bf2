"""Actions come out as data with templates rendered in the sandbox; failures are recorded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.events import Channel
from router.rules import Action, ConversationView, Snapshot
from router.rules.templates import compile_template
from tests.rules.support import decide, make_event, one_rule

STRIPE = {
    "source": "stripe",
    "type": "invoice.payment_failed",
    "channel": None,
    "contact": None,
    "text": None,
    "data": {"customer_phone": "+15551230001", "hosted_invoice_url": "https://pay/x", "n": 3},
}


def test_every_action_kind_as_data(tmp_path: Path) -> None:
    then: list[Any] = [
        {"reply": {"text": "Hi {{ contact.address[-4:] }}"}},
        {
            "send": {
                "channel": "sms",
                "to": "{{ data.customer_phone }}",
                "category": "transactional",
                "text": "Pay here: {{ data.hosted_invoice_url }}",
            }
        },
        {"escalate": {"reason": "asked for {{ text | lower }}", "channel": "#billing"}},
        {"forward": {"to": "crm"}},
        {"tag": "vip"},
        {"tag": {"tags": ["a", "{{ source }}"]}},
        {"tag": {"name": "b"}},
        {"set": {"plan": "{{ conversation.attributes.plan }}", "visits": 4, "gone": None}},
        {"drop": {}},
        {"drop": None},
    ]
    ruleset = one_rule(tmp_path, {}, then)
    snapshot = Snapshot(conversation=ConversationView(state="open", attributes={"plan": "gold"}))
    event = make_event(text="A HUMAN", data={"customer_phone": "+1555", "hosted_invoice_url": "u"})
    decision = decide(ruleset, event, snapshot)
    assert decision.errors == []
    assert decision.actions == [
        Action(rule_id="r", index=0, kind="reply", params={"text": "Hi 0001"}),
        Action(
            rule_id="r",
            index=1,
            kind="send",
            params={
                "channel": "sms",
                "to": "+1555",
                "category": "transactional",
                "text": "Pay here: u",
            },
        ),
        Action(
            rule_id="r",
            index=2,
            kind="escalate",
            params={"reason": "asked for a human", "channel": "#billing"},
        ),
        Action(rule_id="r", index=3, kind="forward", params={"to": "crm"}),
        Action(rule_id="r", index=4, kind="tag", params={"tags": ["vip"]}),
        Action(rule_id="r", index=5, kind="tag", params={"tags": ["a", "twilio"]}),
        Action(rule_id="r", index=6, kind="tag", params={"tags": ["b"]}),
        Action(
            rule_id="r", index=7, kind="set", params={"plan": "gold", "visits": 4, "gone": None}
        ),
        Action(rule_id="r", index=8, kind="drop", params={}),
        Action(rule_id="r", index=9, kind="drop", params={}),
    ]


def test_missing_variable_skips_that_action_only(tmp_path: Path) -> None:
    then = [
        {
            "send": {
                "channel": "sms",
                "to": "{{ data.phone }}",
                "category": "transactional",
                "text": "x",
            }
        },
        {"forward": {"to": "crm"}},
        {"reply": {"text": "{{ data.phone | default('no phone') }}"}},
    ]
    ruleset = one_rule(tmp_path, {"source": "stripe"}, then)
    decision = decide(ruleset, make_event(**STRIPE))
    assert decision.matched == ["r"]
    assert [(a.index, a.kind) for a in decision.actions] == [(1, "forward"), (2, "reply")]
    assert decision.actions[1].params == {"text": "no phone"}
    assert decision.errors == ["rule r, action 0 (send): 'data.phone' is undefined"]


@pytest.mark.parametrize(
    ("attack", "message"),
    [
        ("{{ ''.__class__ }}", "cannot reach '__class__'"),
        ("{{ ''.__class__.__mro__[1].__subclasses__() }}", "cannot call anything"),
        ("{{ data.x.__mro__ }}", "cannot reach '__mro__'"),
        ("{{ data.__class__ }}", "cannot reach '__class__'"),
        ("{{ data['__class__'] }}", "cannot reach '__class__'"),
        ("{{ data._private }}", "cannot reach '_private'"),
        ("{{ text.upper() }}", "cannot call anything"),
        ("{{ data.items() }}", "cannot call anything"),
        ("{{ 'x'.ljust(100000000) }}", "cannot call anything"),
        ("{{ '%999999999s' % 'x' }}", "the % operator is not available"),
    ],
)
def test_reaching_past_the_event_is_a_load_error(tmp_path: Path, attack: str, message: str) -> None:
    from router.rules import RulesInvalid

    with pytest.raises(RulesInvalid) as caught:
        one_rule(tmp_path, {}, [{"drop": {}}, {"reply": {"text": attack}}])
    (error,) = caught.value.errors
    assert (error.file, error.line) == ("rules.yaml", 1) and message in error.message


@pytest.mark.parametrize("attack", ["{{ 'x' * 1000000 }}", "{{ 9 ** 999999 }}"])
def test_templates_are_sandboxed(tmp_path: Path, attack: str) -> None:
    ruleset = one_rule(tmp_path, {}, [{"reply": {"text": attack}}, {"drop": {}}])
    # Computations are only known to be too big at render time: recorded, never raised.
    decision = decide(ruleset, make_event(**STRIPE))
    assert [a.kind for a in decision.actions] == ["drop"]
    assert len(decision.errors) == 1 and decision.errors[0].startswith("rule r, action 0 (reply):")
    assert "<class" not in decision.errors[0] and "object at" not in decision.errors[0]


def test_unknown_globals_and_filters_are_load_errors(tmp_path: Path) -> None:
    from router.rules import RulesInvalid

    cases = {
        "{{ cycler.__init__.__globals__ }}": "unknown template variable 'cycler'",
        "{{ range(10) }}": "unknown template variable 'range'",
        "{{ text | center(9999999) }}": "No filter named 'center'",
        "{{ data.n | attr('__class__') }}": "No filter named 'attr'",
    }
    for text, message in cases.items():
        with pytest.raises(RulesInvalid, match=message):
            one_rule(tmp_path, {}, [{"reply": {"text": text}}])


def test_dict_keys_win_over_dict_methods(tmp_path: Path) -> None:
    ruleset = one_rule(tmp_path, {}, [{"reply": {"text": "{{ data.items }} {{ data.keys }}"}}])
    decision = decide(ruleset, make_event(data={"items": 3, "keys": "k"}))
    assert decision.actions[0].params == {"text": "3 k"}


def test_rendered_values_are_text_and_unicode_safe(tmp_path: Path) -> None:
    ruleset = one_rule(tmp_path, {}, [{"reply": {"text": "Grüße, {{ data.name | title }} 👋"}}])
    decision = decide(ruleset, make_event(channel=Channel.WHATSAPP, data={"name": "zoë"}))
    assert decision.actions[0].params == {"text": "Grüße, Zoë 👋"}


#: Texts, often with Slack's markup characters in them.
TEXTS = st.text(max_size=5) | st.text(alphabet="<>&!@|ab", max_size=6)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | TEXTS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from("abc"), inner, max_size=3)
    ),
    max_leaves=8,
)
SOURCES = [
    "{{ data }}",
    "x {{ data.a }} y",
    "{{ data.a.b }}-{{ data['c'] }}",
    "{{ data.a | default('none') }}",
    "{{ data.a.b | d(0) }}{{ text }}",
    "{{ contact.address }}",
    "{{ data.a | default('x') | upper }}",
    "{{- data.b -}}  \n",
    "<!here> {{ data.a | default('<x>') }} & {{ text }}",
]


@settings(max_examples=200, deadline=None)
@given(
    data=JSON,
    text=st.none() | TEXTS,
    contact=st.none() | st.just({"address": "+1"}),
    slack=st.booleans(),
)
def test_fast_render_equals_jinja(data: Any, text: str | None, contact: Any, slack: bool) -> None:
    context = {"data": data, "text": text, "contact": contact}
    for source in SOURCES:
        template = compile_template(source, ["data", "text", "contact"])
        try:
            expected: Any = template.render_with_jinja(context, slack=slack)
        except Exception as exc:  # the sandbox's error, which render must raise too
            expected = type(exc)
        try:
            got: Any = template.render(context, slack=slack)
        except Exception as exc:
            got = type(exc)
        assert got == expected, source


HOSTILE = "<!channel> urgent <@U0OWNER> <https://evil.example/x|click here> & co"
SHOWN = (
    "&lt;!channel&gt; urgent &lt;@U0OWNER&gt; &lt;https://evil.example/x|click here&gt; &amp; co"
)


@pytest.mark.parametrize(
    ("then", "channel", "posted"),
    [
        ({"send": {"channel": "slack", "to": "C0SALES", "category": "transactional"}}, None, 1),
        ({"send": {"channel": "sms", "to": "+15551230001", "category": "marketing"}}, None, 0),
        ({"reply": {}}, Channel.SLACK, 1),
        ({"reply": {}}, Channel.SMS, 0),
    ],
)
@pytest.mark.parametrize(
    ("template", "jinja_only"),
    [
        ("<!here> {{ text }} (from <@{{ contact.address }}>)", False),
        ("{% if text %}<!here> {{ text }} (from <@{{ contact.address }}>){% endif %}", True),
    ],
)
def test_a_text_posted_to_slack_escapes_what_it_interpolates_and_keeps_its_own_markup(
    tmp_path: Path,
    then: dict[str, Any],
    channel: Channel | None,
    posted: int,
    template: str,
    jinja_only: bool,
) -> None:
    """Both renderings (the quick one and jinja's) escape for Slack; other channels get the
    customer's text as it is."""
    kind = next(iter(then))
    action = {kind: {**then[kind], "text": template}}
    ruleset = one_rule(tmp_path, {}, [action])
    assert (ruleset.rules[0].then[0].params["text"]._parts is None) is jinja_only
    event = make_event(text=HOSTILE, contact="U0<&>", channel=channel or Channel.SMS)
    [decided] = decide(ruleset, event).actions
    if posted:
        assert decided.params["text"] == f"<!here> {SHOWN} (from <@U0&lt;&amp;&gt;>)"
    else:
        assert decided.params["text"] == f"<!here> {HOSTILE} (from <@U0<&>>)"

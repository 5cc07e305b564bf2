"""The console's pages (SPEC §13) over a real escalation: a signed Twilio webhook asking for a
human, routed by the worker in the server, then read as a person reads it."""

from __future__ import annotations

import html
import re
from collections.abc import Iterator

import httpx
import pytest
from markupsafe import escape

from tests.cases.twilio import sms
from tests.console.browser import Browser
from tests.support import ADMIN_TOKEN, LiveServer, live_server, wait_for

RULES = """version: 1
rules:
  - id: human-please
    when: {channel: sms, text: {contains_any: [human]}}
    then:
      - escalate: {reason: "asked for a human"}
      - reply: {text: "Thanks! A member of our team will text you back shortly."}
"""
CUSTOMER = "+15551230001"
HOSTILE = "<script>alert('x')</script> a human please & thanks"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    tmp = tmp_path_factory.mktemp("console-pages")
    rules = tmp / "rules"
    rules.mkdir()
    (rules / "support.yaml").write_text(RULES)
    extra = f'[rules]\npath = "{rules}"\n[channels.slack]\nescalation_channel = "C0SUP"\n'
    with live_server(tmp, routing=True, extra=extra) as running:
        ask_for_a_human(running, "SMCONSOLE1", HOSTILE)
        yield running


@pytest.fixture(scope="module")
def browser(server: LiveServer) -> Iterator[Browser]:
    opened = Browser(server.base_url)
    opened.sign_in(ADMIN_TOKEN)
    yield opened
    opened.close()


def ask_for_a_human(server: LiveServer, sid: str, body: str) -> None:
    assert server.post(sms(sid, body, CUSTOMER)).status_code == 200


def escalations(browser: Browser) -> str:
    page = browser.get("/console/")
    assert page.status_code == 200, page.text
    return page.text


def conversation_link(browser: Browser) -> str:
    wait_for(lambda: "/console/conversations/" in escalations(browser), timeout=15)
    match = re.search(r'href="(/console/conversations/[^"]+)"', escalations(browser))
    assert match
    return html.unescape(match[1])


def test_the_escalations_page_lists_the_escalation_with_the_contact_masked(
    browser: Browser,
) -> None:
    conversation_link(browser)
    page = escalations(browser)
    assert "+1555*****01" in page
    assert CUSTOMER not in page
    assert CUSTOMER.removeprefix("+") not in page
    assert "asked for a human" in page
    assert "human-please" in page
    assert '<span class="badge badge-escalated">escalated</span>' in page
    assert re.search(r'<time datetime="[^"]+Z" title="[^"]+ UTC">[^<]+</time>', page)
    assert '<a href="/console/" aria-current="page">Escalations</a>' in page


def test_the_conversation_page_shows_history_and_delivery_status(
    server: LiveServer, browser: Browser
) -> None:
    link = conversation_link(browser)

    def delivered() -> bool:
        page = browser.get(link).text
        return '<span class="badge badge-delivered">delivered</span>' in page

    wait_for(delivered, timeout=15)  # sandbox SMS: delivered without a provider call
    page = browser.get(link)
    assert page.status_code == 200
    text = page.text
    assert "Thanks! A member of our team will text you back shortly." in text
    assert "asked for a human" in text
    assert '<span class="badge badge-subscribed">subscribed</span>' in text
    assert CUSTOMER not in text
    # The key works as a link too (the API's and the CLI's name for it).
    key = httpx.URL(server.base_url).copy_with(
        path=f"/console/conversations/sms:{CUSTOMER}:+15559870000"
    )
    assert browser.get(str(key.raw_path.decode())).status_code == 200


def test_a_customer_message_with_markup_is_shown_escaped(browser: Browser) -> None:
    page = browser.get(conversation_link(browser)).text
    assert "<script>" not in page
    assert str(escape(HOSTILE)) in page  # as jinja escapes: &lt;script&gt;...


def test_an_unknown_conversation_is_not_found(browser: Browser) -> None:
    assert browser.get("/console/conversations/sms:+15550000000:+15559870000").status_code == 404
    assert browser.get("/console/conversations/01JAAAAAAAAAAAAAAAAAAAAAAA").status_code == 404


@pytest.mark.parametrize(
    ("path", "title"),
    [
        ("/console/dead-letters", "Dead letters"),
        ("/console/events", "Events"),
        ("/console/rules", "Rules"),
    ],
)
def test_the_pages_still_to_come_say_so(browser: Browser, path: str, title: str) -> None:
    page = browser.get(path)
    assert page.status_code == 200
    assert f"<h1>{title}</h1>" in page.text
    assert "Coming in a later version" in page.text
    assert 'aria-current="page"' in page.text


def test_pages_carry_no_script_and_forbid_any_other_origin(browser: Browser) -> None:
    page = browser.get("/console/")
    assert "<script" not in page.text
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "frame-ancestors 'none'" in policy
    assert page.headers["cache-control"] == "no-store"
    assert not re.search(r'(src|href)="(https?:)?//', page.text)


def test_every_control_on_a_page_has_a_label(browser: Browser) -> None:
    """A visible input is labelled by id; a button by its text (the hidden CSRF field is no
    control)."""
    pages = [escalations(browser), browser.get(conversation_link(browser)).text]
    pages.append(Browser(browser.client.base_url.__str__()).get("/console/signin").text)
    for page in pages:
        labels = set(re.findall(r'<label for="([^"]+)">', page))
        for match in re.finditer(r"<input ([^>]*)>", page):
            if 'type="hidden"' not in match[1]:
                ident = re.search(r'id="([^"]+)"', match[1])
                assert ident and ident[1] in labels, match[0]
        for match in re.finditer(r"<button[^>]*>([^<]*)</button>", page):
            assert match[1].strip(), match[0]


def test_escalations_wait_oldest_first(server: LiveServer, browser: Browser) -> None:
    conversation_link(browser)
    assert server.post(sms("SMCONSOLE2", "a human please", "+15551230002")).status_code == 200
    wait_for(lambda: "+1555*****02" in escalations(browser), timeout=15)
    page = escalations(browser)
    assert page.index("+1555*****01") < page.index("+1555*****02")


def test_a_stop_shows_in_the_consent_and_its_ledger(server: LiveServer, browser: Browser) -> None:
    """Last in the module: the contact is opted out from here on."""
    link = conversation_link(browser)
    ask_for_a_human(server, "SMCONSOLESTOP", "STOP")

    def opted_out() -> bool:
        return '<span class="badge badge-opted_out">opted_out</span>' in browser.get(link).text

    wait_for(opted_out, timeout=15)
    page = browser.get(link).text
    ledger = page.split('id="ledger"')[1]
    assert "<table>" in ledger and "opted_out" in ledger
    assert CUSTOMER not in page

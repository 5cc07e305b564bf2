"""`switchboard rules check|test|diff`: outputs and exit codes, as a marketer would run them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from router.cli.main import cli
from router.rules import rules_version
from tests.cases.twilio import message_params, signed
from tests.support import PUBLIC_URL, SECRETS, config_text, live_server, run_cli

REPO = Path(__file__).resolve().parents[2]
WINDOWS = '[windows]\nbusiness = "Mon-Fri 09:00-17:00"\n'

SUPPORT = """\
version: 1
rules:
  - id: human-please
    when:
      channel: sms
      text: {contains_any: [agent, human]}
    then:
      - escalate: {reason: "asked for a human"}
      - reply: {text: "Hi {{ contact.address }}, a person will answer soon."}
    stop: true
  - id: hours
    when:
      channel: sms
      text: {contains_any: [hours]}
    then:
      - reply: {text: "Open 9 to 5."}
  - id: agent-only
    when:
      conversation.state: agent
    then:
      - tag: with-agent
"""

#: Line 6 column 13: the operator `contain` (a typo); line 9 column 9: an unknown action.
BROKEN = """\
version: 1
rules:
  - id: typo
    when:
      channel: sms
      text: {contain: refund}
    then:
      - reply: {text: "ok"}
      - shout: {text: "HEY"}
"""


def _folder(root: Path, name: str, files: dict[str, str]) -> Path:
    folder = root / name
    folder.mkdir()
    for filename, text in files.items():
        (folder / filename).write_text(text)
    return folder


@pytest.fixture
def live_rules(tmp_path: Path) -> Path:
    return _folder(tmp_path, "rules", {"support.yaml": SUPPORT})


@pytest.fixture
def config(tmp_path: Path, live_rules: Path) -> Path:
    path = tmp_path / "switchboard.toml"
    extra = f'[rules]\npath = "{live_rules}"\n{WINDOWS}'
    path.write_text(config_text(tmp_path / "var" / "switchboard.db", extra=extra))
    return path


def _event_file(tmp_path: Path, doc: dict[str, object], name: str = "event.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    return str(path)


# --- check ---------------------------------------------------------------------------------


def test_check_valid_folder_prints_ok_and_version(config: Path, live_rules: Path) -> None:
    result = run_cli(config, "rules", "check")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith("OK: 3 rules in 1 file")
    assert rules_version(live_rules) in result.stdout


def test_check_invalid_folder_lists_every_error_located(config: Path, tmp_path: Path) -> None:
    draft = _folder(tmp_path, "draft", {"a.yaml": SUPPORT, "broken.yaml": BROKEN})
    result = run_cli(config, "rules", "check", str(draft))
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert any(line.startswith(f"{draft}/broken.yaml:6:14: ") for line in lines), lines
    assert any(line.startswith(f"{draft}/broken.yaml:9:9: ") for line in lines), lines
    assert "contain" in result.stdout and "shout" in result.stdout
    assert "2 errors" in result.stderr


def test_check_json(config: Path, tmp_path: Path, live_rules: Path) -> None:
    ok = run_cli(config, "rules", "check", "--json")
    assert ok.exit_code == 0
    assert ok.json() == {"valid": True, "rules_version": rules_version(live_rules), "errors": []}
    draft = _folder(tmp_path, "draft", {"broken.yaml": BROKEN})
    bad = run_cli(config, "rules", "check", str(draft), "--json")
    assert bad.exit_code == 1
    located = {(e["file"], e["line"], e["column"]) for e in bad.json()["errors"]}
    assert {("broken.yaml", 6, 14), ("broken.yaml", 9, 9)} <= located


def test_check_missing_folder_fails(config: Path, tmp_path: Path) -> None:
    result = run_cli(config, "rules", "check", str(tmp_path / "nowhere"))
    assert result.exit_code == 1
    assert "does not exist" in result.stderr


def test_starter_rules_pass_with_the_demo_config() -> None:
    # The demo config's rules.path is relative to the working directory: name the folder.
    folder = REPO / "rules"
    result = CliRunner().invoke(
        cli,
        ["--config", str(REPO / "examples" / "switchboard.toml"), "rules", "check", str(folder)],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.stdout + result.stderr
    assert rules_version(folder) in result.stdout


def test_check_without_any_config_uses_defaults(
    live_rules: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SWITCHBOARD_CONFIG", raising=False)
    result = CliRunner().invoke(cli, ["rules", "check", str(live_rules)], catch_exceptions=False)
    assert result.exit_code == 0
    assert result.stdout.startswith("OK: 3 rules")
    assert "no config given" in result.stderr


def test_rules_commands_do_not_import_the_http_app(config: Path, live_rules: Path) -> None:
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from router.cli.main import cli\n"
        f"r = CliRunner().invoke(cli, ['--config', {str(config)!r}, 'rules', 'check'])\n"
        "assert r.exit_code == 0, r.output\n"
        "print(sorted(m for m in ('litestar', 'router.http.app', 'uvicorn') if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True
    )
    assert done.stdout.strip() == "[]"


def test_usage_errors_exit_2(config: Path) -> None:
    assert run_cli(config, "rules", "diff").exit_code == 2  # --rules is required
    assert run_cli(config, "rules", "test").exit_code == 2  # EVENT.json is required
    assert run_cli(config, "rules", "test", "/no/such/event.json").exit_code == 2
    assert run_cli(config, "rules", "frobnicate").exit_code == 2


# --- test ----------------------------------------------------------------------------------


def test_rules_test_json_shape_and_rendered_actions(config: Path, tmp_path: Path) -> None:
    event = _event_file(
        tmp_path,
        {"channel": "sms", "text": "Can I talk to a HUMAN, please?", "contact": "+15551230001"},
    )
    result = run_cli(config, "rules", "test", event, "--json")
    assert result.exit_code == 0, result.stderr
    payload = result.json()
    assert set(payload) == {"rules_version", "matched", "actions"}
    assert payload["matched"] == ["human-please"]  # stop: true, so `hours` never runs
    assert payload["actions"] == [
        {
            "rule_id": "human-please",
            "index": 0,
            "kind": "escalate",
            "params": {"reason": "asked for a human"},
        },
        {
            "rule_id": "human-please",
            "index": 1,
            "kind": "reply",
            "params": {"text": "Hi +15551230001, a person will answer soon."},
        },
    ]


def test_rules_test_reads_the_conversation_snapshot(config: Path, tmp_path: Path) -> None:
    without = _event_file(tmp_path, {"channel": "sms", "text": "hi"}, "a.json")
    with_agent = _event_file(
        tmp_path, {"channel": "sms", "text": "hi", "conversation": {"state": "agent"}}, "b.json"
    )
    assert run_cli(config, "rules", "test", without, "--json").json()["matched"] == []
    assert run_cli(config, "rules", "test", with_agent, "--json").json()["matched"] == [
        "agent-only"
    ]


def test_rules_test_human_output(config: Path, tmp_path: Path, live_rules: Path) -> None:
    event = _event_file(tmp_path, {"channel": "sms", "text": "what are your hours?"})
    result = run_cli(config, "rules", "test", event)
    assert result.exit_code == 0
    assert f"rules version {rules_version(live_rules)}" in result.stdout
    assert "matched: hours" in result.stdout
    assert 'hours #0 reply text="Open 9 to 5."' in result.stdout


def test_rules_test_with_draft_and_invalid_input(config: Path, tmp_path: Path) -> None:
    event = _event_file(tmp_path, {"channel": "sms", "text": "hours"})
    draft = _folder(tmp_path, "draft", {"broken.yaml": BROKEN})
    invalid = run_cli(config, "rules", "test", event, "--rules", str(draft), "--json")
    assert invalid.exit_code == 1
    assert f"{draft}/broken.yaml:6:14:" in invalid.stdout
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{not json")
    assert run_cli(config, "rules", "test", str(bad_json)).exit_code == 1
    typo = _event_file(tmp_path, {"channel": "sms", "txt": "hours"}, "typo.json")
    result = run_cli(config, "rules", "test", typo)
    assert result.exit_code == 1
    assert "unknown field 'txt'" in result.stderr


# --- diff ----------------------------------------------------------------------------------


def _post_sms(base_url: str, unique: str, body: str) -> None:
    params = {**message_params(unique), "Body": body, "NumMedia": "0"}
    for key in ("MediaUrl0", "MediaContentType0"):
        params.pop(key)
    request = signed(PUBLIC_URL, "/webhooks/twilio/messages", params, SECRETS["twilio"][0])
    response = httpx.post(base_url + request.path, content=request.body, headers=request.headers)
    assert response.status_code == 200, response.text


DRAFT = (
    SUPPORT.replace('"Open 9 to 5."', '"Open 8 to 6."')
    + """\
  - id: greet
    when:
      text: {contains_any: [hello]}
    then:
      - reply: {text: "Hello to you too"}
"""
)


def test_rules_diff_over_recorded_events(tmp_path: Path, live_rules: Path) -> None:
    extra = f'[rules]\npath = "{live_rules}"\n{WINDOWS}'
    draft = _folder(tmp_path, "draft", {"support.yaml": DRAFT})
    with live_server(tmp_path, extra=extra) as server:
        _post_sms(server.base_url, "diff1", "I want a human")  # unchanged (stop: true)
        _post_sms(server.base_url, "diff2", "your hours?")  # reply text changes
        _post_sms(server.base_url, "diff3", "hello there")  # a new rule fires
        _post_sms(server.base_url, "diff4", "nothing to see")  # unchanged, nothing matches
        report = server.cli("rules", "diff", "--rules", str(draft), "--json")
        human = server.cli("rules", "diff", "--rules", str(draft))
        none = server.cli("rules", "diff", "--rules", str(draft), "--since", "2999-01-01")
    assert report.exit_code == 0, report.stderr
    data = report.json()
    assert data["live_version"] == rules_version(live_rules)
    assert data["draft_version"] == rules_version(draft)
    assert (data["events_checked"], data["changed"], data["unchanged"]) == (4, 2, 2)
    hours, greet = data["changes"]
    assert hours["live"]["actions"][0]["params"] == {"text": "Open 9 to 5."}
    assert hours["draft"]["actions"][0]["params"] == {"text": "Open 8 to 6."}
    assert (greet["live"]["matched"], greet["draft"]["matched"]) == ([], ["greet"])

    assert human.exit_code == 0
    assert "matched: (none) -> greet" in human.stdout
    assert '- hours #0 reply text="Open 9 to 5."' in human.stdout
    assert '+ hours #0 reply text="Open 8 to 6."' in human.stdout
    assert (
        human.stdout.rstrip().splitlines()[-1].startswith("2 of 4 events would change, 2 unchanged")
    )
    assert none.exit_code == 0 and none.stdout.startswith("0 of 0 events would change")


def test_rules_diff_refuses_an_invalid_draft(config: Path, tmp_path: Path) -> None:
    draft = _folder(tmp_path, "draft", {"broken.yaml": BROKEN})
    result = run_cli(config, "rules", "diff", "--rules", str(draft))
    assert result.exit_code == 1
    assert f"{draft}/broken.yaml:9:9:" in result.stdout


# --- the starter rules in rules/ -----------------------------------------------------------

STARTER_CASES = [
    (
        {
            "source": "stripe",
            "type": "invoice.payment_failed",
            "data": {
                "customer_phone": "+15551230001",
                "hosted_invoice_url": "https://invoice.stripe.com/i/1",
            },
        },
        ["payment-failed-crm", "payment-failed-text"],
        [
            ("forward", {"to": "crm"}),
            (
                "send",
                {
                    "channel": "sms",
                    "to": "+15551230001",
                    "category": "transactional",
                    "text": "Your payment to Example Co failed. Update your card here: "
                    "https://invoice.stripe.com/i/1",
                },
            ),
        ],
    ),
    (
        {"source": "stripe", "type": "invoice.payment_failed", "data": {}},
        ["payment-failed-crm"],
        [("forward", {"to": "crm"})],
    ),
    (
        {"source": "twilio", "type": "message.received", "channel": "sms", "text": "HUMAN pls!"},
        ["human-please"],
        [
            ("escalate", {"reason": "asked for a human"}),
            ("reply", {"text": "Thanks! A member of our team will text you back shortly."}),
        ],
    ),
    (
        {"source": "twilio", "type": "message.received", "channel": "whatsapp", "text": "Hours?"},
        ["opening-hours"],
        None,
    ),
    (
        {"source": "twilio", "type": "message.received", "channel": "sms", "text": "my order?"},
        ["order-status"],
        None,
    ),
    (
        {
            "source": "mailgun",
            "type": "email.received",
            "channel": "email",
            "contact": "ann@bigcustomer.com",
            "data": {"subject": "Renewal"},
        },
        ["key-account-email-to-slack"],
        [
            (
                "send",
                {
                    "channel": "slack",
                    "to": "#key-accounts",
                    "category": "conversational",
                    "text": "New email from ann@bigcustomer.com: Renewal",
                },
            ),
            ("tag", {"tags": ["key-account"]}),
        ],
    ),
    (
        {
            "source": "stripe",
            "type": "customer.subscription.deleted",
            "data": {"metadata": {"email": "bob@example.org"}},
        },
        ["subscription-cancelled-winback"],
        [
            (
                "send",
                {
                    "channel": "email",
                    "to": "bob@example.org",
                    "category": "marketing",  # so quiet hours and opt-outs apply
                    "subject": "We miss you",
                    "text": "Sorry to see you go! Come back within 30 days and get 20% off "
                    "with code COMEBACK20.",
                },
            )
        ],
    ),
]


@pytest.mark.parametrize(("event", "matched", "actions"), STARTER_CASES)
def test_starter_rules_decisions(
    tmp_path: Path,
    event: dict[str, object],
    matched: list[str],
    actions: list[tuple[str, dict[str, object]]] | None,
) -> None:
    config = REPO / "examples" / "switchboard.toml"
    result = run_cli(
        config,
        "rules",
        "test",
        _event_file(tmp_path, event),
        "--rules",
        str(REPO / "rules"),
        "--json",
    )
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""  # no template problems
    payload = result.json()
    assert payload["matched"] == matched
    if actions is not None:
        assert [(a["kind"], a["params"]) for a in payload["actions"]] == actions


# --- check of one file ---------------------------------------------------------------------

PROMO = """\
version: 1
rules:
  - id: spring-sale
    when: {channel: sms, text: {contains_any: [sale]}}
    then:
      - reply: {text: "20% off until Sunday."}
"""


def test_check_one_file_gives_ok_and_the_folder_version(config: Path, tmp_path: Path) -> None:
    """The file a marketer just edited, by its path: the version is the folder's with it."""
    draft = _folder(tmp_path, "draft", {"support.yaml": SUPPORT, "promo.yaml": PROMO})
    result = run_cli(config, "rules", "check", str(draft / "promo.yaml"))
    assert result.exit_code == 0, result.stdout + result.stderr
    assert result.stdout.startswith(f"OK: 1 rule in {draft / 'promo.yaml'}")
    assert rules_version(draft) in result.stdout
    assert result.stderr == ""


def test_check_one_file_locates_its_errors_at_its_path(config: Path, tmp_path: Path) -> None:
    draft = _folder(tmp_path, "draft", {"support.yaml": SUPPORT, "promo.yaml": BROKEN})
    result = run_cli(config, "rules", "check", str(draft / "promo.yaml"))
    assert result.exit_code == 1
    assert result.stdout.splitlines() == [
        f"{draft}/promo.yaml:6:14: " + _message(result.stdout, "6:14"),
        f"{draft}/promo.yaml:9:9: " + _message(result.stdout, "9:9"),
    ]
    assert f"2 errors in {draft / 'promo.yaml'}" in result.stderr


def _message(stdout: str, where: str) -> str:
    return next(line for line in stdout.splitlines() if f":{where}: " in line).split(": ", 1)[1]


def test_check_one_file_finds_an_id_taken_by_another_file(config: Path, tmp_path: Path) -> None:
    """promo.yaml sorts first, so a folder check blames support.yaml; the file check blames
    the file being edited, and names where the id is already used."""
    taken = PROMO.replace("spring-sale", "hours")
    draft = _folder(tmp_path, "draft", {"support.yaml": SUPPORT, "promo.yaml": taken})
    result = run_cli(config, "rules", "check", str(draft / "promo.yaml"))
    assert result.exit_code == 1
    assert result.stdout.splitlines() == [
        f"{draft}/promo.yaml:3:9: duplicate rule id 'hours', already used at "
        "support.yaml:11:9; expected a unique id"
    ]
    folder = run_cli(config, "rules", "check", str(draft))
    assert folder.exit_code == 1 and folder.stdout.startswith(f"{draft}/support.yaml:11:9: ")


def test_check_one_file_notes_but_passes_errors_of_other_files(
    config: Path, tmp_path: Path
) -> None:
    draft = _folder(tmp_path, "draft", {"broken.yaml": BROKEN, "promo.yaml": PROMO})
    result = run_cli(config, "rules", "check", str(draft / "promo.yaml"))
    assert result.exit_code == 0, result.stdout + result.stderr
    assert result.stdout.startswith("OK: 1 rule in")
    assert f"2 errors in other files of {draft}" in result.stderr
    as_json = run_cli(config, "rules", "check", str(draft / "promo.yaml"), "--json")
    assert as_json.exit_code == 0
    assert as_json.json() == {
        "valid": True,
        "rules_version": rules_version(draft),
        "errors": [],
        "other_file_errors": 2,
    }


def test_check_one_file_counts_the_folder_caps(config: Path, tmp_path: Path) -> None:
    """The folder-wide rule cap counts the other files first: this file is the one past it."""
    from router.rules import loader

    many = "version: 1\nrules:\n" + "".join(
        f"  - id: r{i}\n    when: {{channel: sms}}\n    then: [drop: {{}}]\n"
        for i in range(loader.MAX_RULES)
    )
    draft = _folder(tmp_path, "draft", {"zz-many.yaml": many, "promo.yaml": PROMO})
    result = run_cli(config, "rules", "check", str(draft / "promo.yaml"))
    assert result.exit_code == 1
    assert result.stdout.startswith(f"{draft}/promo.yaml:3:5: too many rules")


def test_check_one_file_json_errors_and_missing_file(config: Path, tmp_path: Path) -> None:
    draft = _folder(tmp_path, "draft", {"promo.yaml": BROKEN})
    bad = run_cli(config, "rules", "check", str(draft / "promo.yaml"), "--json")
    assert bad.exit_code == 1
    located = {(e["file"], e["line"], e["column"]) for e in bad.json()["errors"]}
    assert located == {("promo.yaml", 6, 14), ("promo.yaml", 9, 9)}
    missing = run_cli(config, "rules", "check", str(draft / "gone.yaml"))
    assert missing.exit_code == 1
    assert f"rules file {draft / 'gone.yaml'} does not exist" in missing.stderr


def test_check_a_file_the_server_would_not_read_says_so(config: Path, tmp_path: Path) -> None:
    draft = _folder(tmp_path, "draft", {"promo.yml": PROMO})
    result = run_cli(config, "rules", "check", str(draft / "promo.yml"))
    assert result.exit_code == 0
    assert "reads only *.yaml" in result.stderr

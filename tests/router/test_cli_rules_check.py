"""`rules check` against issue 7's attacks: located errors and exit 1, never a traceback;
templates rendered on a sample event, regexes refused or probed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import config_text, run_cli

REPO = Path(__file__).resolve().parents[2]


def _rule(when: str, then: str) -> str:
    return f"version: 1\nrules:\n  - id: r\n    when: {when}\n    then:\n      - {then}\n"


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "switchboard.toml"
    path.write_text(config_text(tmp_path / "var" / "s.db"))
    return path


def _check(
    config: Path, folder: Path, text: str, *, one_file: bool = False
) -> tuple[int, list[str]]:
    """`rules check` of the folder, or (`one_file`) of x.yaml alone: the same checks apply."""
    folder.mkdir(exist_ok=True)
    (folder / "x.yaml").write_text(text)
    result = run_cli(config, "rules", "check", str(folder / "x.yaml" if one_file else folder))
    return result.exit_code, result.stdout.splitlines()


@pytest.mark.parametrize(
    ("text", "where", "fragment"),
    [
        (
            _rule("{source: stripe}", "reply: {text: \"{{ ''.__class__.__mro__ }}\"}"),
            "6:23",
            "cannot reach '__mro__'",
        ),
        (_rule("{text: {matches: '^(a|a)*$'}}", "drop: {}"), "4:28", "start with the same"),
        (_rule("{text: {matches: '(a|ab)*'}}", "drop: {}"), "4:28", "start with the same"),
        (_rule("{text: {matches: '(\\w|\\d)+'}}", "drop: {}"), "4:28", "start with the same"),
    ],
    ids=["mro", "a-or-a", "a-or-ab", "word-or-digit"],
)
@pytest.mark.parametrize("one_file", [False, True], ids=["folder", "file"])
def test_check_refuses_what_used_to_pass(
    config: Path, tmp_path: Path, text: str, where: str, fragment: str, one_file: bool
) -> None:
    code, lines = _check(config, tmp_path / "rules", text, one_file=one_file)
    assert code == 1
    assert len(lines) == 1 and lines[0].startswith(f"{tmp_path / 'rules' / 'x.yaml'}:{where}: ")
    assert fragment in lines[0]


def test_check_renders_every_template_on_a_sample_event(config: Path, tmp_path: Path) -> None:
    text = """\
version: 1
rules:
  - id: pay
    when: {source: stripe}
    then:
      - reply: {text: "Pay at {{ data.hosted_invoice_url }}, {{ contact.address[-4:] }}"}
      - reply: {text: "{{ 'x' * 1000000 }}"}
      - tag: "{{ text | int / 0 }}"
"""
    code, lines = _check(config, tmp_path / "rules", text)
    assert code == 1
    folder = tmp_path / "rules" / "x.yaml"
    assert lines == [
        f"{folder}:7:23: template fails on a sample stripe event: "
        "repetition would produce a too long text",
        f"{folder}:8:14: template fails on a sample stripe event: "
        "ZeroDivisionError: division by zero",
    ]


def test_missing_optional_values_are_fine(config: Path, tmp_path: Path) -> None:
    text = _rule("{channel: email}", 'reply: {text: "Re: {{ data.subject }} {{ contact.name }}"}')
    code, lines = _check(config, tmp_path / "rules", text)
    assert code == 0 and lines[0].startswith("OK: 1 rule in 1 file")


def test_check_probes_regexes_with_pumped_texts(config: Path, tmp_path: Path) -> None:
    # Polynomial backtracking: no nesting or alternation for the static checks to see.
    text = _rule("{text: {matches: '\\s*\\s*\\s*\\s*$'}}", "drop: {}")
    code, lines = _check(config, tmp_path / "rules", text)
    assert code == 1 and len(lines) == 1
    assert lines[0].startswith(f"{tmp_path / 'rules' / 'x.yaml'}:4:28: regular expression ")
    assert "timed out on the text" in lines[0]
    result = run_cli(config, "rules", "check", "--json", str(tmp_path / "rules"))
    assert result.exit_code == 1
    (error,) = result.json()["errors"]
    assert (error["line"], error["column"]) == (4, 28) and "timed out" in error["message"]


@pytest.mark.integration
def test_deep_nesting_is_a_located_error_not_a_traceback(tmp_path: Path) -> None:
    """Issue 7: 500 nested `{not: ` made `rules check` print a RecursionError traceback."""
    folder = tmp_path / "rules"
    folder.mkdir()
    when = "{not: " * 500 + "{channel: sms}" + "}" * 500
    (folder / "deep.yaml").write_text(_rule(when, "drop: {}"))
    done = subprocess.run(
        [sys.executable, "-m", "router", "rules", "check", str(folder)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert done.returncode == 1
    assert (
        done.stdout == f"{folder / 'deep.yaml'}:4:185: nested too deeply, expected at most 32 "
        "levels of mappings and lists\n"
    )
    assert "Traceback" not in done.stderr and "Error: 1 error in" in done.stderr

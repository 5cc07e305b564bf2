"""Configuration: every mistake is reported with its key and line; verification stays on."""

from __future__ import annotations

from pathlib import Path

import pytest

from router.config import ConfigError, Settings, load_settings, parse_settings

ROOT = Path(__file__).resolve().parents[2]


def error_of(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        parse_settings(text, "switchboard.toml")
    return caught.value


def assert_located(text: str, key: str, line: int, fragment: str = "") -> ConfigError:
    """The error names `key` and `line`, in its fields and in the message people read."""
    error = error_of(text)
    assert (error.key, error.line) == (key, line), str(error)
    assert str(error).startswith(f"switchboard.toml:{line}: {key}: "), str(error)
    assert fragment in error.message, error.message
    return error


# -- located errors --------------------------------------------------------------------------


def test_unknown_key_in_a_table() -> None:
    text = '[server]\nhost = "127.0.0.1"\nhots = "typo"\n'
    assert_located(text, "server.hots", 3, "unknown key")


def test_unknown_top_level_table() -> None:
    text = "[server]\nport = 8080\n\n[sever]\nport = 1\n"
    assert_located(text, "sever", 4, "unknown key")


def test_wrong_type() -> None:
    text = '# comment\n[server]\nhost = "127.0.0.1"\nport = "eighty"\n'
    assert_located(text, "server.port", 4, "Expected `int`, got `str`")


@pytest.mark.parametrize("port", [-1, 65536, 70000])
def test_out_of_range_port(port: int) -> None:
    assert_located(f"[server]\nport = {port}\n", "server.port", 2, "Expected `int`")


def test_rules_poll_seconds_is_a_non_negative_interval() -> None:
    """0 turns the poll off (SIGHUP and the watcher only); a negative interval is a typo."""
    assert parse_settings("[rules]\npoll_seconds = 0\n", "s.toml").rules.poll_seconds == 0
    assert Settings().rules.poll_seconds == 2.0
    assert_located("[rules]\npoll_seconds = -1\n", "rules.poll_seconds", 2, ">= 0")


def test_invalid_enum_value_names_its_own_table() -> None:
    text = '[channels.sms]\nmode = "live"\n\n[channels.slack]\nmode = "loud"\n'
    assert_located(text, "channels.slack.mode", 5, "loud")


def test_empty_secrets_list() -> None:
    text = "[server]\nport = 8080\n\n[sources.twilio]\nauth_tokens = []\n"
    assert_located(text, "sources.twilio.auth_tokens", 5, "length >= 1")


def test_secret_that_is_not_a_string() -> None:
    assert_located("[sources.slack]\nsigning_secrets = [42]\n", "sources.slack.signing_secrets", 2)


def test_toml_syntax_error_has_its_line() -> None:
    error = error_of('[server]\nhost = "127.0.0.1"\nport = \n')
    assert error.line == 3
    assert str(error).startswith("switchboard.toml:3: ")


def test_toml_error_at_end_of_document_points_at_the_last_line() -> None:
    error = error_of('[server]\nhost = "127.0.0.1"\nadmin_token = "unterminated\n')
    assert error.line == 3


def test_duplicate_key_is_a_syntax_error_with_its_line() -> None:
    assert error_of("[server]\nport = 1\nport = 2\n").line == 3


def test_key_inside_an_inline_table() -> None:
    text = (
        "[server]\nport = 1\n\n[sources]\n"
        'slack = { signing_secrets = ["s"], tolerence_seconds = 9 }\n'
    )
    assert_located(text, "sources.slack.tolerence_seconds", 5, "unknown key")


def test_dotted_keys() -> None:
    text = "[server]\nport = 1\n\n[sources]\ntwilio.auth_tokens = []\n"
    assert_located(text, "sources.twilio.auth_tokens", 5)


def test_named_custom_source_is_named() -> None:
    text = (
        '[sources.custom.crm]\nsecrets = ["whsec_a"]\n\n'
        '[sources.custom.billing]\nsecrets = ["whsec_b"]\ntolerance_seconds = 0\n'
    )
    assert_located(text, "sources.custom.billing.tolerance_seconds", 6, ">= 1")


def test_named_forward_inside_nested_inline_tables() -> None:
    text = '[channels.http]\nmode = "live"\nforwards = { crm = { url = 42 } }\n'
    assert_located(text, "channels.http.forwards.crm.url", 3, "Expected `str`")


def test_named_window_with_a_wrong_type() -> None:
    text = '[windows]\nbusiness = "Mon-Fri 09:00-17:00"\nnight = 21\n'
    assert_located(text, "windows.night", 3, "Expected `str`")


def test_array_of_tables_where_a_table_belongs() -> None:
    text = '[server]\nport = 1\n\n[[windows]]\nname = "business"\n'
    assert_located(text, "windows", 4, "Expected `object`, got `array`")


def test_missing_required_key_in_a_named_table() -> None:
    text = '[channels.http.forwards.crm]\nsecret = "whsec_x"\n'
    assert_located(text, "channels.http.forwards.crm.url", 1, "missing")


# -- secrets ---------------------------------------------------------------------------------


def test_literal_secret() -> None:
    settings = parse_settings('[sources.twilio]\nauth_tokens = ["literal-token"]\n')
    assert settings.sources.twilio is not None
    assert settings.sources.twilio.auth_tokens == ["literal-token"]


def test_env_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SB_TEST_TWILIO", "from-env")
    settings = parse_settings('[sources.twilio]\nauth_tokens = ["env:SB_TEST_TWILIO", "b"]\n')
    assert settings.sources.twilio is not None
    assert settings.sources.twilio.auth_tokens == ["from-env", "b"]


def test_env_variable_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SB_TEST_UNSET", raising=False)
    text = '[server]\nport = 1\n[sources.stripe]\nsigning_secrets = ["env:SB_TEST_UNSET"]\n'
    assert_located(text, "sources.stripe.signing_secrets", 4, "SB_TEST_UNSET is not set")


def test_file_secret_is_read_and_trimmed(tmp_path: Path) -> None:
    secret = tmp_path / "slack.secret"
    secret.write_text("  from-a-file\n\n", encoding="utf-8")
    settings = parse_settings(f'[sources.slack]\nsigning_secrets = ["file:{secret}"]\n')
    assert settings.sources.slack is not None
    assert settings.sources.slack.signing_secrets == ["from-a-file"]


def test_missing_secret_file(tmp_path: Path) -> None:
    text = f'[sources.mailgun]\nsigning_keys = ["file:{tmp_path / "absent"}"]\n'
    assert_located(text, "sources.mailgun.signing_keys", 2, "cannot read secret file")


def test_secrets_of_channels_are_resolved_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SB_TEST_BOT", "xoxb-real")
    settings = parse_settings('[channels.slack]\nbot_token = "env:SB_TEST_BOT"\n')
    assert settings.channels.slack.bot_token == "xoxb-real"


@pytest.mark.parametrize("name", ["secrets", "secret", "password"])
def test_custom_source_named_like_a_secret_key_still_resolves(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """A source named `secrets` once kept its `env:` reference as the literal secret."""
    monkeypatch.setenv("SB_TEST_CUSTOM", "whsec_real")
    settings = parse_settings(f'[sources.custom.{name}]\nsecrets = ["env:SB_TEST_CUSTOM"]\n')
    assert settings.sources.custom[name].secrets == ["whsec_real"]


# -- verification cannot be turned off -------------------------------------------------------

SOURCE_SECRET_KEYS = [
    ("sources.twilio", "auth_tokens"),
    ("sources.slack", "signing_secrets"),
    ("sources.stripe", "signing_secrets"),
    ("sources.mailgun", "signing_keys"),
    ("sources.sendgrid", "basic_auth"),
    ("sources.custom.crm", "secrets"),
]


@pytest.mark.parametrize(("table", "key"), SOURCE_SECRET_KEYS)
def test_source_without_a_secret_is_an_error(table: str, key: str) -> None:
    error = assert_located(
        f'[server]\nport = 1\n\n[{table}]\naccept_types = ["*"]\n', f"{table}.{key}", 4
    )
    assert "verification cannot be turned off" in error.message


@pytest.mark.parametrize(("table", "key"), SOURCE_SECRET_KEYS)
def test_source_with_an_empty_secret_is_an_error(table: str, key: str) -> None:
    assert_located(f'[{table}]\n{key} = [""]\n', f"{table}.{key}", 2, "secret is empty")


def test_secret_from_an_empty_env_variable_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SB_TEST_EMPTY", "")
    text = '[sources.twilio]\nauth_tokens = ["env:SB_TEST_EMPTY"]\n'
    assert_located(text, "sources.twilio.auth_tokens", 2, "secret is empty")


@pytest.mark.parametrize(
    "switch", ["verify = false", "skip_verification = true", "insecure = true"]
)
def test_no_key_switches_verification_off(switch: str) -> None:
    text = f'[sources.twilio]\nauth_tokens = ["t"]\n{switch}\n'
    assert_located(text, f"sources.twilio.{switch.split()[0]}", 3, "unknown key")


# -- finding the file ------------------------------------------------------------------------


def test_config_path_from_switchboard_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "sb.toml"
    path.write_text("[server]\nport = 9099\n", encoding="utf-8")
    monkeypatch.setenv("SWITCHBOARD_CONFIG", str(path))
    assert load_settings().server.port == 9099
    assert load_settings(None).server.port == 9099


def test_explicit_path_wins_over_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "env.toml").write_text("[server]\nport = 1\n", encoding="utf-8")
    (tmp_path / "arg.toml").write_text("[server]\nport = 2\n", encoding="utf-8")
    monkeypatch.setenv("SWITCHBOARD_CONFIG", str(tmp_path / "env.toml"))
    assert load_settings(tmp_path / "arg.toml").server.port == 2


def test_no_config_at_all(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SWITCHBOARD_CONFIG", raising=False)
    with pytest.raises(ConfigError, match="SWITCHBOARD_CONFIG"):
        load_settings()


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read") as caught:
        load_settings(tmp_path / "nope.toml")
    assert str(tmp_path / "nope.toml") in str(caught.value)


def test_errors_from_a_file_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "switchboard.toml"
    path.write_text("[server]\nport = true\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert str(caught.value).startswith(f"{path}:2: server.port: ")


def test_example_config_loads_with_every_source_verified() -> None:
    settings = load_settings(ROOT / "examples" / "switchboard.toml")
    sources = settings.sources
    assert sources.twilio and sources.twilio.auth_tokens
    assert sources.slack and sources.slack.signing_secrets
    assert sources.stripe and sources.stripe.signing_secrets
    assert sources.mailgun and sources.mailgun.signing_keys
    assert sources.sendgrid and sources.sendgrid.credentials
    assert sources.custom["crm"].secrets
    assert settings.channels.sms.mode == "sandbox"


def test_empty_file_gives_the_defaults() -> None:
    settings = parse_settings("")
    assert settings == Settings()
    assert settings.server.port == 8080
    assert settings.sources.twilio is None


# -- values that parse but make no sense -------------------------------------------------------

SEMANTIC_CASES = [
    (
        '[server]\nport = 8080\npublic_url = "hooks.example.com"\n',
        "server.public_url",
        3,
        "expected the URL",
    ),
    ('[storage]\nurl = "mysql://db/switchboard"\n', "storage.url", 2, "postgresql://"),
    (
        "[storage]\npool_min_size = 5\npool_max_size = 4\n",
        "storage.pool_min_size",
        2,
        "at most storage.pool_max_size",
    ),
    (
        '[sources.custom.twilio]\nsecrets = ["whsec_YWJj"]\n',
        "sources.custom.twilio",
        1,
        "built-in source",
    ),
    ('[sources.custom."CRM/x"]\nsecrets = ["whsec_YWJj"]\n', "sources.custom.CRM/x", 1, "URL part"),
    (
        '[sources.custom.crm]\nsecrets = ["not base64!"]\n',
        "sources.custom.crm.secrets",
        2,
        "whsec_ + base64",
    ),
    ('[compliance]\nquiet_hours = "9pm-8am"\n', "compliance.quiet_hours", 2, "HH:MM-HH:MM"),
    ('[compliance]\ndefault_timezone = "Mars/Olympus"\n', "compliance.default_timezone", 2, "IANA"),
    ('[escalation]\nclaim_timeout = "soon"\n', "escalation.claim_timeout", 2, "duration"),
    (
        '[windows]\nbusiness = "Mon-Fri 09:00-17:00"\nweekend = "Sat-Sun 25:00-26:00"\n',
        "windows.weekend",
        3,
        "",
    ),
]


@pytest.mark.parametrize(("text", "key", "line", "fragment"), SEMANTIC_CASES)
def test_semantic_errors_are_located(text: str, key: str, line: int, fragment: str) -> None:
    assert_located(text, key, line, fragment)


def test_custom_source_secret_forms_the_reference_library_accepts() -> None:
    text = '[sources.custom.crm]\nsecrets = ["whsec_ZGVtby1zZWNyZXQ=", "ZGVtby1zZWNyZXQ"]\n'
    assert parse_settings(text).sources.custom["crm"].secrets[1] == "ZGVtby1zZWNyZXQ"


def test_storage_url_may_be_a_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    """A PostgreSQL URL can carry a password: it may come from the environment or a file."""
    monkeypatch.setenv("SB_TEST_DB", "postgresql://sb:hunter2@db.internal/switchboard")
    settings = parse_settings('[storage]\nurl = "env:SB_TEST_DB"\npool_max_size = 20\n')
    assert settings.storage.url == "postgresql://sb:hunter2@db.internal/switchboard"
    assert (settings.storage.pool_min_size, settings.storage.pool_max_size) == (2, 20)


def test_pool_size_out_of_range_is_located() -> None:
    assert_located("[storage]\npool_max_size = 0\n", "storage.pool_max_size", 2)


def test_stripe_api_key_is_a_secret_and_api_base_a_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STRIPE_KEY", "rk_live_read")
    stripe = '[sources.stripe]\nsigning_secrets = ["whsec_x"]\n'
    settings = parse_settings(
        stripe + 'api_key = "env:STRIPE_KEY"\napi_base = "http://127.0.0.1:9"\n'
    )
    assert settings.sources.stripe is not None
    assert (settings.sources.stripe.api_key, settings.sources.stripe.api_base) == (
        "rk_live_read",
        "http://127.0.0.1:9",
    )
    assert_located(stripe + 'api_key = "env:NO_SUCH_KEY"\n', "sources.stripe.api_key", 3)
    assert_located(stripe + 'api_base = "api.stripe.com"\n', "sources.stripe.api_base", 3)


def test_console_users_are_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SB_TEST_ANA", "ana-token")
    settings = parse_settings(
        '[console]\nsession_hours = 2\n[console.users]\nana = "env:SB_TEST_ANA"\n'
    )
    assert settings.console.users == {"ana": "ana-token"}
    assert settings.console.session_hours == 2
    assert settings.console.enabled is True


def test_console_user_whose_secret_is_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SB_TEST_UNSET", raising=False)
    text = '[console.users]\nbo = "env:SB_TEST_UNSET"\n'
    assert_located(text, "console.users.bo", 2, "SB_TEST_UNSET is not set")


@pytest.mark.parametrize(
    ("name", "fragment"), [("admin", "server.admin_token"), ('"a b"', "a user name")]
)
def test_console_user_names_are_checked(name: str, fragment: str) -> None:
    text = f'[console.users]\n{name} = "token"\n'
    assert_located(text, f"console.users.{name.strip(chr(34))}", 2, fragment)

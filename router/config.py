"""Configuration (SPEC §5): TOML decoded into typed Structs, secrets resolved, errors located.

Every error names the dotted key and the line of the file it comes from, so a newcomer can fix
`switchboard.toml` without reading code. Verification cannot be switched off: each configured
source must carry at least one non-empty secret.
"""

from __future__ import annotations

import copy
import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

Secrets = Annotated[list[str], msgspec.Meta(min_length=1)]
BodyLimit = Annotated[int, msgspec.Meta(ge=1024)]
KiB, MiB = 1024, 1024 * 1024
Mode = Literal["live", "sandbox"]

_STRICT: dict[str, Any] = {"forbid_unknown_fields": True, "kw_only": True, "frozen": True}


class ServerConfig(msgspec.Struct, **_STRICT):
    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8080
    #: The URL providers call, as configured at the provider: Twilio signs it.
    public_url: str = "http://127.0.0.1:8080"
    #: The ceiling for every request body; each source has its own, lower limit too.
    max_body_bytes: BodyLimit = 40 * MiB
    admin_token: str | None = None
    #: Request line plus headers larger than this are answered 431 (httptools has no limit).
    max_header_bytes: Annotated[int, msgspec.Meta(ge=1024, le=1024 * 1024)] = 32 * 1024
    #: From connection open, or a request's first byte, until its headers are in; else 408.
    header_timeout_seconds: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 10.0
    #: From the end of the headers until the whole body is in; else 408. Emails are large.
    body_timeout_seconds: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 60.0
    #: An idle kept-alive connection is closed after this many seconds.
    keepalive_seconds: Annotated[int, msgspec.Meta(ge=1, le=3600)] = 5
    #: Connections open at once; beyond it a connection is answered 503 and closed.
    max_connections: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 1000
    #: Webhook body bytes held in memory at once, over every connection; a request that would
    #: go past it is answered 503 (providers retry) rather than the process growing unbounded.
    max_body_memory_bytes: BodyLimit = 256 * MiB


#: The shortest `storage.retention_days` other than 0.
MIN_RETENTION_DAYS = 7


class StorageConfig(msgspec.Struct, **_STRICT):
    #: `sqlite:///PATH` or `postgresql://user@host/db`; may be a secret (`env:`, `file:`), as a
    #: PostgreSQL URL can carry a password.
    url: str = "sqlite:///var/switchboard.db"
    #: How long a write waits for a lock held by another process before the store is unavailable.
    busy_timeout_ms: Annotated[int, msgspec.Meta(ge=0)] = 5000
    #: Raw bodies and attachments larger than this go to content-addressed blobs (files beside
    #: a SQLite db; a table on PostgreSQL).
    blob_threshold_bytes: Annotated[int, msgspec.Meta(ge=0)] = 64 * 1024
    #: PostgreSQL: connections each process keeps open, and at most opens.
    pool_min_size: Annotated[int, msgspec.Meta(ge=0, le=1000)] = 2
    pool_max_size: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 10
    #: Days a finished event is kept, with its routing runs and settled outbox rows; 0 keeps
    #: everything. At least MIN_RETENTION_DAYS: a provider's redelivery must still meet its
    #: stored original (Stripe retries for up to three days).
    retention_days: Annotated[int, msgspec.Meta(ge=0)] = 0


class RulesConfig(msgspec.Struct, **_STRICT):
    path: str = "rules"
    #: How often the server compares the files on disk with the live version, under the
    #: watcher (which can miss a change, e.g. on a network file system); 0 turns it off.
    poll_seconds: Annotated[float, msgspec.Meta(ge=0, le=3600)] = 2.0


class TwilioSource(msgspec.Struct, **_STRICT):
    auth_tokens: Secrets
    #: Larger bodies get 413 before any check: an SMS/MMS webhook is a few KB.
    max_body_bytes: BodyLimit = 64 * KiB
    accept_types: list[str] = msgspec.field(default_factory=lambda: ["*"])


class SlackSource(msgspec.Struct, **_STRICT):
    signing_secrets: Secrets
    tolerance_seconds: Annotated[int, msgspec.Meta(ge=1)] = 300
    #: Larger bodies get 413 before any check: events are JSON of a few KB.
    max_body_bytes: BodyLimit = 1 * MiB
    accept_types: list[str] = msgspec.field(default_factory=lambda: ["*"])


class StripeSource(msgspec.Struct, **_STRICT):
    signing_secrets: Secrets
    tolerance_seconds: Annotated[int, msgspec.Meta(ge=1)] = 300
    #: Larger bodies get 413 before any check: snapshot events are JSON of a few KB.
    max_body_bytes: BodyLimit = 1 * MiB
    accept_types: list[str] = msgspec.field(default_factory=lambda: ["*"])
    #: The secret API key reconciliation lists Events with (SPEC §12); none: not asked.
    api_key: str | None = None
    #: Another base URL for the Stripe API (tests: a loopback fake).
    api_base: str | None = None


class MailgunSource(msgspec.Struct, **_STRICT):
    signing_keys: Secrets
    tolerance_seconds: Annotated[int, msgspec.Meta(ge=1)] = 300
    #: Larger bodies get 413: whole emails with attachments (Mailgun takes up to 25 MB).
    max_body_bytes: BodyLimit = 40 * MiB
    accept_types: list[str] = msgspec.field(default_factory=lambda: ["*"])


class SendgridSource(msgspec.Struct, **_STRICT):
    #: `user:password` pairs accepted as HTTP basic auth (a list allows rotation).
    basic_auth: str | Secrets
    #: Larger bodies get 413: whole emails with attachments (SendGrid takes up to 30 MB).
    max_body_bytes: BodyLimit = 40 * MiB
    accept_types: list[str] = msgspec.field(default_factory=lambda: ["*"])

    @property
    def credentials(self) -> list[str]:
        return [self.basic_auth] if isinstance(self.basic_auth, str) else list(self.basic_auth)


class CustomSource(msgspec.Struct, **_STRICT):
    secrets: Secrets
    tolerance_seconds: Annotated[int, msgspec.Meta(ge=1)] = 300
    #: Larger bodies get 413 before any check: JSON events.
    max_body_bytes: BodyLimit = 1 * MiB
    accept_types: list[str] = msgspec.field(default_factory=lambda: ["*"])


class SourcesConfig(msgspec.Struct, **_STRICT):
    twilio: TwilioSource | None = None
    slack: SlackSource | None = None
    stripe: StripeSource | None = None
    mailgun: MailgunSource | None = None
    sendgrid: SendgridSource | None = None
    custom: dict[str, CustomSource] = {}


class SmsChannelConfig(msgspec.Struct, **_STRICT):
    account_sid: str = ""
    auth_token: str = ""
    from_: str | None = msgspec.field(default=None, name="from")
    messaging_service_sid: str | None = None
    mode: Mode = "sandbox"
    api_base: str | None = None
    rate_per_second: Annotated[float, msgspec.Meta(gt=0)] = 1.0


class SlackChannelConfig(msgspec.Struct, **_STRICT):
    bot_token: str = ""
    escalation_channel: str = ""
    mode: Mode = "sandbox"
    api_base: str | None = None
    rate_per_second: Annotated[float, msgspec.Meta(gt=0)] = 1.0


class EmailChannelConfig(msgspec.Struct, **_STRICT):
    smtp_host: str = "127.0.0.1"
    smtp_port: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 25
    username: str | None = None
    password: str | None = None
    from_: str | None = msgspec.field(default=None, name="from")
    mode: Mode = "sandbox"
    starttls: bool = False
    #: SMTP cannot tell whether a message left in doubt by a crash was accepted: `resend`
    #: (the same Message-ID, so a duplicate is recognisable) or mark it `dead` for a person.
    in_doubt: Literal["resend", "dead"] = "resend"


class HttpForward(msgspec.Struct, **_STRICT):
    url: str
    #: Standard Webhooks signing secret (`whsec_...`) for outbound forwards.
    secret: str | None = None


class HttpChannelConfig(msgspec.Struct, **_STRICT):
    forwards: dict[str, HttpForward] = {}
    mode: Mode = "sandbox"


class ChannelsConfig(msgspec.Struct, **_STRICT):
    sms: SmsChannelConfig = SmsChannelConfig()
    slack: SlackChannelConfig = SlackChannelConfig()
    email: EmailChannelConfig = EmailChannelConfig()
    http: HttpChannelConfig = HttpChannelConfig()


class ComplianceConfig(msgspec.Struct, **_STRICT):
    quiet_hours: str = "21:00-08:00"
    default_timezone: str = "UTC"
    help_text: str = "Reply STOP to unsubscribe, START to resubscribe."
    stop_confirmation: str = (
        "You are unsubscribed and will receive no more messages. Reply START to resubscribe."
    )
    start_confirmation: str = "You are resubscribed. Reply STOP to unsubscribe."
    #: US numbers also get the stricter window of their area code's state (the strictest wins).
    state_windows: bool = True


class EscalationConfig(msgspec.Struct, **_STRICT):
    claim_timeout: str = "10m"
    inactivity_close: str = "24h"


class WorkerConfig(msgspec.Struct, **_STRICT):
    """The routing worker (SPEC §7-8): it runs inside `serve`, or alone as `switchboard worker`."""

    #: `serve` runs the worker in the same process; false leaves it to `switchboard worker`.
    in_serve: bool = True
    #: How long a claim on a conversation lasts; a worker that dies leaves it to expire.
    lease_seconds: Annotated[float, msgspec.Meta(gt=0)] = 30.0
    #: The safety-net poll: an ingest in the same process wakes the worker at once.
    poll_seconds: Annotated[float, msgspec.Meta(gt=0)] = 1.0
    #: Tries of an event whose processing raises, before it is marked `failed`.
    max_attempts: Annotated[int, msgspec.Meta(ge=1, le=100)] = 3
    #: Conversations claimed at once, and events of one conversation per claim.
    batch_conversations: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 128
    batch_events: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 16
    #: Messages per conversation kept in its history (both directions).
    history_limit: Annotated[int, msgspec.Meta(ge=0, le=1000)] = 20


class DispatchConfig(msgspec.Struct, **_STRICT):
    """The dispatcher (SPEC §8): it runs wherever the worker runs (`serve`, `worker`)."""

    #: How long a row may stay `sending` before another attempt treats it as in doubt.
    lease_seconds: Annotated[float, msgspec.Meta(gt=0)] = 30.0
    #: Attempts before a row that keeps failing transiently is dead.
    max_attempts: Annotated[int, msgspec.Meta(ge=1, le=100)] = 8
    #: Sends in flight at once, all destinations together.
    concurrency: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 32
    #: The safety-net poll; routing commits wake the dispatcher at once.
    poll_seconds: Annotated[float, msgspec.Meta(gt=0)] = 1.0
    #: Retry delays: capped exponential backoff with full jitter.
    backoff_base_seconds: Annotated[float, msgspec.Meta(gt=0)] = 1.0
    backoff_cap_seconds: Annotated[float, msgspec.Meta(gt=0)] = 300.0
    #: Circuit breaker per destination: this many failures in a row open it for so long.
    breaker_failures: Annotated[int, msgspec.Meta(ge=1)] = 5
    breaker_open_seconds: Annotated[float, msgspec.Meta(gt=0)] = 30.0
    #: How long one send may take before it counts as failed (in doubt).
    timeout_seconds: Annotated[float, msgspec.Meta(gt=0)] = 10.0


class BackupConfig(msgspec.Struct, **_STRICT):
    """Scheduled backups of a SQLite store by `serve` (SPEC §12)."""

    #: Each scheduled backup goes into a new dated folder under this one.
    dir: str = "var/backups"
    #: How often `serve` takes one (`6h`, `1d`); "0" never.
    interval: str = "0"
    #: Scheduled backups kept: older ones are removed once a new one is complete.
    keep: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 7


class ReconcileConfig(msgspec.Struct, **_STRICT):
    """Reconciliation (SPEC §12): asking the providers for what their webhooks never brought."""

    #: How often `serve` (or `switchboard worker` when the worker is not in serve) runs a
    #: pass; "0" never (then only at start, and `switchboard reconcile`).
    interval: str = "10m"
    #: How far back the first pass of a source looks (it has no last success to start from).
    lookback: str = "24h"
    #: Run a pass when the process starts: it catches up the time the box was down.
    on_start: bool = True


class LoggingConfig(msgspec.Struct, **_STRICT):
    level: Literal["debug", "info", "warning", "error"] = "info"
    #: Only with debug on do logs show full phone numbers and message bodies.
    debug: bool = False


class ConsoleConfig(msgspec.Struct, **_STRICT):
    """The web console for people (SPEC §13), served by `serve` at `/console/`."""

    enabled: bool = True
    #: How long a session cookie lasts after sign-in.
    session_hours: Annotated[float, msgspec.Meta(gt=0, le=24 * 30)] = 12.0
    #: Named users: name -> token (a secret: `env:`, `file:` or a literal). A named user signs
    #: in with their own token; `server.admin_token` signs in as `admin`.
    users: dict[str, str] = {}


class Settings(msgspec.Struct, **_STRICT):
    server: ServerConfig = ServerConfig()
    storage: StorageConfig = StorageConfig()
    rules: RulesConfig = RulesConfig()
    sources: SourcesConfig = SourcesConfig()
    channels: ChannelsConfig = ChannelsConfig()
    compliance: ComplianceConfig = ComplianceConfig()
    escalation: EscalationConfig = EscalationConfig()
    worker: WorkerConfig = WorkerConfig()
    dispatch: DispatchConfig = DispatchConfig()
    logging: LoggingConfig = LoggingConfig()
    backup: BackupConfig = BackupConfig()
    reconcile: ReconcileConfig = ReconcileConfig()
    console: ConsoleConfig = ConsoleConfig()
    #: Named time windows for rules' `during:` (e.g. `business = "Mon-Fri 09:00-17:00"`).
    windows: dict[str, str] = {}


class ConfigError(Exception):
    """A config problem, located: `file:line: key: message`."""

    def __init__(self, path: str, line: int | None, key: str, message: str) -> None:
        self.path, self.line, self.key, self.message = path, line, key, message
        where = f"{path}:{line}" if line else path
        super().__init__(f"{where}: {key}: {message}" if key else f"{where}: {message}")


_SECRET_KEYS = frozenset(
    {
        "auth_tokens",
        "signing_secrets",
        "signing_keys",
        "basic_auth",
        "secrets",
        "secret",
        "auth_token",
        "bot_token",
        "password",
        "admin_token",
        "api_key",
    }
)


def load_settings(path: str | os.PathLike[str] | None = None) -> Settings:
    """Read, validate and resolve the config at `path` (default: `$SWITCHBOARD_CONFIG`)."""
    chosen = path or os.environ.get("SWITCHBOARD_CONFIG")
    if not chosen:
        raise ConfigError("<none>", None, "", "no config: pass --config or set SWITCHBOARD_CONFIG")
    file = Path(chosen)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(file), None, "", f"cannot read: {exc.strerror}") from exc
    return parse_settings(text, str(file))


def parse_settings(text: str, filename: str = "switchboard.toml") -> Settings:
    """Validate TOML text into Settings; every error names the key and its line."""
    lines = _KeyLines(text)
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(filename, _toml_error_line(str(exc), text), "", str(exc)) from exc
    _resolve_secrets(raw, (), filename, lines)
    try:
        settings = msgspec.convert(raw, Settings)
    except msgspec.ValidationError as exc:
        key, message = _explain(raw, str(exc))
        raise ConfigError(filename, lines.find(key), key, message) from exc
    from router.config_checks import problems  # imports config: keep the cycle one-way

    for key, message in problems(settings):
        raise ConfigError(filename, lines.find(key), key, message)
    return settings


def _toml_error_line(message: str, text: str) -> int | None:
    """tomllib puts the line in its message, or says `at end of document` (the last line)."""
    match = re.search(r"line (\d+)", message)
    if match:
        return int(match[1])
    return max(len(text.splitlines()), 1) if "end of document" in message else None


def _explain(raw: dict[str, Any], error: str) -> tuple[str, str]:
    """The dotted key and the message of a msgspec validation error."""
    message, _, where = error.rpartition(" - at `$")
    if not message:  # an error at the top level carries no path
        message, where = error, ""
    key = _dotted(_name_table_keys(raw, where.rstrip("`"), error))
    unknown = re.match(r"Object contains unknown field `(.+)`", message)
    missing = re.match(r"Object missing required field `(.+)`", message)
    if unknown:
        key = f"{key}.{unknown[1]}" if key else unknown[1]
        message = "unknown key (see README.md for the keys Switchboard reads)"
    elif missing:
        key = f"{key}.{missing[1]}" if key else missing[1]
        message = "required key is missing"
        if missing[1] in _SECRET_KEYS:
            message += ": every source needs a secret (verification cannot be turned off)"
    return key, message


def _name_table_keys(raw: dict[str, Any], where: str, error: str) -> str:
    """msgspec writes a name inside a table of named entries (`sources.custom.NAME`) as
    `[...]`; find the entry that, left alone in its table, raises the same error."""
    while "[...]" in where:
        prefix, _, rest = where.partition("[...]")
        trail = _dotted(prefix).split(".")
        culprit = next((n for n in _lookup(raw, trail) if _fails_alone(raw, trail, n, error)), "")
        where = f"{prefix}.{culprit}{rest}" if culprit else prefix + rest
    return where


def _lookup(raw: dict[str, Any], trail: list[str]) -> dict[str, Any]:
    node: Any = raw
    for part in trail:
        node = node.get(part) if isinstance(node, dict) else None
    return node if isinstance(node, dict) else {}


def _fails_alone(raw: dict[str, Any], trail: list[str], name: str, error: str) -> bool:
    narrowed = copy.deepcopy(raw)
    _lookup(narrowed, trail[:-1])[trail[-1]] = {name: _lookup(raw, trail)[name]}
    try:
        msgspec.convert(narrowed, Settings)
    except msgspec.ValidationError as exc:
        return str(exc) == error
    return False


def _dotted(msgspec_path: str) -> str:
    """`.sources.twilio.auth_tokens[0]` -> `sources.twilio.auth_tokens`."""
    return re.sub(r"\[\d+\]", "", msgspec_path).lstrip(".")


#: Keys that may be secrets by where they are, not by their name.
_SECRET_PATHS = frozenset({("storage", "url")})
#: Tables whose every entry is a secret, whatever its name.
_SECRET_TABLES = frozenset({("console", "users")})


def _resolve_secrets(node: Any, trail: tuple[str, ...], filename: str, lines: _KeyLines) -> None:
    if not isinstance(node, dict):
        return
    for key, value in node.items():
        here = (*trail, key)
        secret = key in _SECRET_KEYS or here in _SECRET_PATHS or trail in _SECRET_TABLES
        if secret and not isinstance(value, dict):  # not a source named `secrets`
            node[key] = _resolve_value(value, ".".join(here), filename, lines)
        else:
            _resolve_secrets(value, here, filename, lines)


def _resolve_value(value: Any, key: str, filename: str, lines: _KeyLines) -> Any:
    if isinstance(value, list):
        return [_resolve_value(item, key, filename, lines) for item in value]
    if not isinstance(value, str):
        return value
    try:
        resolved = resolve_secret(value)
    except LookupError as exc:
        raise ConfigError(filename, lines.find(key), key, str(exc)) from exc
    if not resolved:
        raise ConfigError(filename, lines.find(key), key, "secret is empty")
    return resolved


def resolve_secret(reference: str) -> str:
    """`env:NAME` -> the variable, `file:PATH` -> the file's content trimmed, else the literal."""
    if reference.startswith("env:"):
        name = reference[4:]
        if name not in os.environ:
            raise LookupError(f"environment variable {name} is not set")
        return os.environ[name]
    if reference.startswith("file:"):
        try:
            return Path(reference[5:]).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise LookupError(f"cannot read secret file {reference[5:]}: {exc.strerror}") from exc
    return reference


class _KeyLines:
    """Maps dotted keys to the line that defines them (tomllib keeps no positions)."""

    _TABLE = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
    _KEY = re.compile(r"""^\s*("[^"]*"|'[^']*'|[A-Za-z0-9_.\-"' ]+?)\s*=""")

    def __init__(self, text: str) -> None:
        self._lines: dict[str, int] = {}
        table = ""
        for number, line in enumerate(text.splitlines(), start=1):
            header = self._TABLE.match(line)
            if header:
                table = self._normalise(header[1])
                self._lines.setdefault(table, number)
                continue
            key = self._KEY.match(line)
            if key:
                full = f"{table}.{self._normalise(key[1])}" if table else self._normalise(key[1])
                self._lines.setdefault(full, number)

    @staticmethod
    def _normalise(key: str) -> str:
        return ".".join(part.strip().strip("\"'") for part in key.split("."))

    def find(self, key: str) -> int | None:
        """The line of `key`, else of its nearest enclosing table or key."""
        parts = key.split(".")
        while parts:
            line = self._lines.get(".".join(parts))
            if line:
                return line
            parts.pop()
        return None

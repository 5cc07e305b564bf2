"""Wiring of provider adapters from settings: the one place the core meets `channels/`.

Only the HTTP app and the CLI import this module. Each provider is one `Provider` entry of
`PROVIDERS`, made of small functions of its own: the webhook routes of its `[sources.*]` tables,
its live sender, the history reconciliation asks. Adding a provider is writing those and adding
one entry; the public functions at the bottom only walk the table.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from channels.base import InboundAdapter
from channels.email_send import SmtpSender
from channels.history import AnyHistory
from channels.mailgun import MailgunAdapter
from channels.outbound import Sender
from channels.sandbox import SandboxSender
from channels.sendgrid import SendgridAdapter
from channels.slack import SlackEventsAdapter, SlackInteractionsAdapter
from channels.slack_history import SlackHistory
from channels.slack_send import SlackSender
from channels.standard import HttpForwardSender, StandardWebhooksAdapter
from channels.stripe import StripeAdapter
from channels.stripe_history import StripeHistory
from channels.twilio import TwilioAdapter
from channels.twilio_history import TwilioHistory
from channels.twilio_send import TwilioSender
from router.clock import Clock
from router.config import Settings, SourcesConfig
from router.metrics import Metrics
from router.pipeline.reconcile import Reconciler
from router.store.base import Store


class SourceTable(Protocol):
    """What every `[sources.*]` table has."""

    @property
    def max_body_bytes(self) -> int: ...

    @property
    def accept_types(self) -> list[str]: ...


class Source(NamedTuple):
    """One configured `[sources.*]` table and the routes (the path after /webhooks/) it answers.

    Adapters are made on demand, from the app's clock: reading body limits makes none."""

    name: str
    table: SourceTable
    routes: dict[str, Callable[[Clock], InboundAdapter]]


def _no_sources(sources: SourcesConfig) -> list[Source]:
    return []


def _no_sender(settings: Settings, timeout: float) -> Sender | None:
    return None


@dataclass(frozen=True, kw_only=True)
class Provider:
    """How one provider is wired in; each part is optional."""

    #: The provider; reconciliation reports its history under this source name (SPEC §12).
    name: str
    #: Its configured `[sources.*]` tables, none when it has none.
    sources: Callable[[SourcesConfig], list[Source]] = _no_sources
    #: The channels its sender serves (SPEC §8); a sandbox serves them unless `sender` gives one.
    channels: tuple[str, ...] = ()
    #: Its sender in `mode = "live"` (None otherwise), given the sender's own timeout.
    sender: Callable[[Settings, float], Sender | None] = _no_sender
    #: What reconciliation asks, or why it does not; None: the provider has no history.
    history: Callable[[Settings], AnyHistory | str] | None = None


def _webhook_url(settings: Settings, route: str) -> str:
    """The URL the provider calls for `route`, as configured at the provider."""
    return f"{settings.server.public_url.rstrip('/')}/webhooks/{route}"


# Twilio: SMS and WhatsApp, both ways.


def _twilio_sources(sources: SourcesConfig) -> list[Source]:
    table = sources.twilio
    if table is None:
        return []
    tokens = table.auth_tokens
    return [
        Source(
            "twilio",
            table,
            {
                "twilio/messages": lambda _clock: TwilioAdapter(tokens, "messages"),
                "twilio/status": lambda _clock: TwilioAdapter(tokens, "status"),
            },
        )
    ]


def _twilio_sender(settings: Settings, timeout: float) -> Sender | None:
    sms = settings.channels.sms
    if sms.mode != "live":
        return None
    return TwilioSender(
        account_sid=sms.account_sid,
        auth_token=sms.auth_token,
        from_=sms.from_,
        messaging_service_sid=sms.messaging_service_sid,
        api_base=sms.api_base,
        status_callback_url=_webhook_url(settings, "twilio/status"),
        timeout_seconds=timeout,
    )


def _twilio_history(settings: Settings) -> AnyHistory | str:
    sms = settings.channels.sms
    if sms.mode != "live":
        return "channels.sms is in sandbox mode"
    if not (sms.account_sid and sms.auth_token):
        return "no credentials (channels.sms account_sid, auth_token)"
    sender = TwilioSender(
        account_sid=sms.account_sid, auth_token=sms.auth_token, api_base=sms.api_base
    )
    return TwilioHistory(sender, messages_url=_webhook_url(settings, "twilio/messages"))


# Slack: events and interactions in, posts out.


def _slack_sources(sources: SourcesConfig) -> list[Source]:
    table = sources.slack
    if table is None:
        return []
    secrets, tolerance = table.signing_secrets, table.tolerance_seconds
    return [
        Source(
            "slack",
            table,
            {
                "slack/events": functools.partial(SlackEventsAdapter, secrets, tolerance),
                "slack/interactions": functools.partial(
                    SlackInteractionsAdapter, secrets, tolerance
                ),
            },
        )
    ]


def _slack_sender(settings: Settings, timeout: float) -> Sender | None:
    slack = settings.channels.slack
    if slack.mode != "live":
        return None
    return SlackSender(bot_token=slack.bot_token, api_base=slack.api_base, timeout_seconds=timeout)


def _slack_history(settings: Settings) -> AnyHistory | str:
    slack = settings.channels.slack
    if slack.mode != "live":
        return "channels.slack is in sandbox mode"
    if not slack.bot_token:
        return "no credentials (channels.slack bot_token)"
    poster = SlackSender(bot_token=slack.bot_token, api_base=slack.api_base)
    return SlackHistory(poster, events_url=_webhook_url(settings, "slack/events"))


# Stripe: events in, and its Events API for reconciliation.


def _stripe_sources(sources: SourcesConfig) -> list[Source]:
    table = sources.stripe
    if table is None:
        return []
    adapter = functools.partial(StripeAdapter, table.signing_secrets, table.tolerance_seconds)
    return [Source("stripe", table, {"stripe": adapter})]


def _stripe_history(settings: Settings) -> AnyHistory | str:
    stripe = settings.sources.stripe
    if stripe is None or not stripe.api_key:
        return "no credentials (sources.stripe api_key)"
    hook = _webhook_url(settings, "stripe")
    return StripeHistory(stripe.api_key, api_base=stripe.api_base, webhook_url=hook)


# Inbound email: Mailgun and SendGrid.


def _mailgun_sources(sources: SourcesConfig) -> list[Source]:
    table = sources.mailgun
    if table is None:
        return []
    adapter = functools.partial(MailgunAdapter, table.signing_keys, table.tolerance_seconds)
    return [Source("mailgun", table, {"email/mailgun": adapter})]


def _sendgrid_sources(sources: SourcesConfig) -> list[Source]:
    table = sources.sendgrid
    if table is None:
        return []
    credentials = table.credentials
    return [
        Source("sendgrid", table, {"email/sendgrid": lambda _clock: SendgridAdapter(credentials)})
    ]


# Outbound email: SMTP.


def _smtp_sender(settings: Settings, timeout: float) -> Sender | None:
    email = settings.channels.email
    return SmtpSender.from_config(email, timeout_seconds=timeout) if email.mode == "live" else None


# Standard Webhooks: custom sources in, HTTP forwards out.


def _custom_sources(sources: SourcesConfig) -> list[Source]:
    return [
        Source(
            name,
            table,
            {
                f"custom/{name}": functools.partial(
                    StandardWebhooksAdapter, name, table.secrets, table.tolerance_seconds
                )
            },
        )
        for name, table in sources.custom.items()
    ]


def _forward_sender(settings: Settings, timeout: float) -> Sender | None:
    http = settings.channels.http
    if http.mode != "live":
        return None
    return HttpForwardSender.from_config(http, timeout_seconds=timeout)


#: Every provider, in the order routes, senders and histories are listed.
PROVIDERS: tuple[Provider, ...] = (
    Provider(
        name="twilio",
        sources=_twilio_sources,
        channels=("sms", "whatsapp"),
        sender=_twilio_sender,
        history=_twilio_history,
    ),
    Provider(
        name="slack",
        sources=_slack_sources,
        channels=("slack",),
        sender=_slack_sender,
        history=_slack_history,
    ),
    Provider(name="stripe", sources=_stripe_sources, history=_stripe_history),
    Provider(name="mailgun", sources=_mailgun_sources),
    Provider(name="sendgrid", sources=_sendgrid_sources),
    Provider(name="smtp", channels=("email",), sender=_smtp_sender),
    Provider(name="standard", sources=_custom_sources, channels=("http",), sender=_forward_sender),
)


def _sources(settings: Settings) -> list[Source]:
    return [source for provider in PROVIDERS for source in provider.sources(settings.sources)]


def inbound_adapters(settings: Settings, clock: Clock) -> dict[str, InboundAdapter]:
    """`{route: adapter}` for every configured source; route is the path after /webhooks/."""
    return {
        route: make(clock) for source in _sources(settings) for route, make in source.routes.items()
    }


def body_limits(settings: Settings) -> dict[str, int]:
    """`{route: bytes}`: the source's `max_body_bytes`, never above `server.max_body_bytes`."""
    ceiling = settings.server.max_body_bytes
    return {
        route: min(source.table.max_body_bytes, ceiling)
        for source in _sources(settings)
        for route in source.routes
    }


def accept_types(settings: Settings) -> dict[str, list[str]]:
    """`{source: patterns}`: event types outside them are stored as `ignored`."""
    return {source.name: source.table.accept_types for source in _sources(settings)}


def senders(settings: Settings) -> dict[str, Sender]:
    """One sender per channel (SPEC §8): the official SDKs in `mode = "live"`, the sandbox
    (records delivered, calls nobody) otherwise. Each sender's own timeout is a little shorter
    than the dispatcher's, so a slow provider is classified by its sender, not cut off."""
    timeout = max(settings.dispatch.timeout_seconds - 1.0, settings.dispatch.timeout_seconds / 2)
    found: dict[str, Sender] = {}
    for provider in PROVIDERS:
        if provider.channels:
            sender = provider.sender(settings, timeout) or SandboxSender(provider.channels)
            found.update(dict.fromkeys(provider.channels, sender))
    return found


def histories(settings: Settings) -> tuple[dict[str, AnyHistory], dict[str, str]]:
    """What reconciliation asks (SPEC §12): `{source: History}` for each source with live
    credentials, and `{source: why not}` for the others."""
    found: dict[str, AnyHistory] = {}
    skipped: dict[str, str] = {}
    for provider in PROVIDERS:
        if provider.history is not None:
            history = provider.history(settings)
            if isinstance(history, str):
                skipped[provider.name] = history
            else:
                found[provider.name] = history
    return found, skipped


def reconciler(
    store: Store,
    settings: Settings,
    clock: Clock,
    metrics: Metrics,
    on_stored: Callable[[], None] | None = None,
    *,
    log_passes: bool = True,
) -> Reconciler:
    """The reconciler of `settings`: its histories, `accept_types`, and `reconcile`."""
    found, skipped = histories(settings)
    return Reconciler(
        store,
        found,
        settings.reconcile,
        clock,
        metrics,
        skipped=skipped,
        accept_types=accept_types(settings),
        on_stored=on_stored,
        log_passes=log_passes,
    )

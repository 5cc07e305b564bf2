"""Wiring of provider adapters from settings: the one place the core meets `channels/`.

Only the HTTP app and the CLI import this module.
"""

from __future__ import annotations

from collections.abc import Callable

from channels.base import InboundAdapter
from channels.email import SmtpSender
from channels.history import AnyHistory
from channels.mailgun import MailgunAdapter
from channels.outbound import Sender
from channels.sandbox import SandboxSender
from channels.sendgrid import SendgridAdapter
from channels.slack import SlackEventsAdapter, SlackInteractionsAdapter, SlackSender
from channels.slack_history import SlackHistory
from channels.standard import HttpForwardSender, StandardWebhooksAdapter
from channels.stripe import StripeAdapter
from channels.stripe_history import StripeHistory
from channels.twilio import TwilioAdapter, TwilioSender
from channels.twilio_history import TwilioHistory
from router.clock import Clock
from router.config import Settings
from router.metrics import Metrics
from router.pipeline.reconcile import Reconciler
from router.store.base import Store


def inbound_adapters(settings: Settings, clock: Clock) -> dict[str, InboundAdapter]:
    """`{route: adapter}` for every configured source; route is the path after /webhooks/."""
    sources = settings.sources
    routes: dict[str, InboundAdapter] = {}
    if sources.twilio:
        routes["twilio/messages"] = TwilioAdapter(sources.twilio.auth_tokens, "messages")
        routes["twilio/status"] = TwilioAdapter(sources.twilio.auth_tokens, "status")
    if sources.slack:
        slack = sources.slack
        routes["slack/events"] = SlackEventsAdapter(
            slack.signing_secrets, slack.tolerance_seconds, clock
        )
        routes["slack/interactions"] = SlackInteractionsAdapter(
            slack.signing_secrets, slack.tolerance_seconds, clock
        )
    if sources.stripe:
        routes["stripe"] = StripeAdapter(
            sources.stripe.signing_secrets, sources.stripe.tolerance_seconds, clock
        )
    if sources.mailgun:
        routes["email/mailgun"] = MailgunAdapter(
            sources.mailgun.signing_keys, sources.mailgun.tolerance_seconds, clock
        )
    if sources.sendgrid:
        routes["email/sendgrid"] = SendgridAdapter(sources.sendgrid.credentials)
    for name, custom in sources.custom.items():
        routes[f"custom/{name}"] = StandardWebhooksAdapter(
            name, custom.secrets, custom.tolerance_seconds, clock
        )
    return routes


def body_limits(settings: Settings) -> dict[str, int]:
    """`{route: bytes}`: the source's `max_body_bytes`, never above `server.max_body_bytes`."""
    sources = settings.sources
    per_route: dict[str, int] = {}
    if sources.twilio:
        per_route["twilio/messages"] = per_route["twilio/status"] = sources.twilio.max_body_bytes
    if sources.slack:
        per_route["slack/events"] = per_route["slack/interactions"] = sources.slack.max_body_bytes
    if sources.stripe:
        per_route["stripe"] = sources.stripe.max_body_bytes
    if sources.mailgun:
        per_route["email/mailgun"] = sources.mailgun.max_body_bytes
    if sources.sendgrid:
        per_route["email/sendgrid"] = sources.sendgrid.max_body_bytes
    for name, custom in sources.custom.items():
        per_route[f"custom/{name}"] = custom.max_body_bytes
    ceiling = settings.server.max_body_bytes
    return {route: min(limit, ceiling) for route, limit in per_route.items()}


def accept_types(settings: Settings) -> dict[str, list[str]]:
    """`{source: patterns}`: event types outside them are stored as `ignored`."""
    sources = settings.sources
    found: dict[str, list[str]] = {
        name: cfg.accept_types
        for name, cfg in (
            ("twilio", sources.twilio),
            ("slack", sources.slack),
            ("stripe", sources.stripe),
            ("mailgun", sources.mailgun),
            ("sendgrid", sources.sendgrid),
        )
        if cfg is not None
    }
    found.update({name: cfg.accept_types for name, cfg in sources.custom.items()})
    return found


def senders(settings: Settings) -> dict[str, Sender]:
    """One sender per channel (SPEC §8): the official SDKs in `mode = "live"`, the sandbox
    (records delivered, calls nobody) otherwise. Each sender's own timeout is a little shorter
    than the dispatcher's, so a slow provider is classified by its sender, not cut off."""
    channels = settings.channels
    timeout = max(settings.dispatch.timeout_seconds - 1.0, settings.dispatch.timeout_seconds / 2)
    sms = channels.sms
    texts: Sender = (
        TwilioSender(
            account_sid=sms.account_sid,
            auth_token=sms.auth_token,
            from_=sms.from_,
            messaging_service_sid=sms.messaging_service_sid,
            api_base=sms.api_base,
            status_callback_url=settings.server.public_url.rstrip("/") + "/webhooks/twilio/status",
            timeout_seconds=timeout,
        )
        if sms.mode == "live"
        else SandboxSender(("sms", "whatsapp"))
    )
    slack = channels.slack
    posts: Sender = (
        SlackSender(bot_token=slack.bot_token, api_base=slack.api_base, timeout_seconds=timeout)
        if slack.mode == "live"
        else SandboxSender(("slack",))
    )
    mail: Sender = (
        SmtpSender.from_config(channels.email, timeout_seconds=timeout)
        if channels.email.mode == "live"
        else SandboxSender(("email",))
    )
    forwards: Sender = (
        HttpForwardSender.from_config(channels.http, timeout_seconds=timeout)
        if channels.http.mode == "live"
        else SandboxSender(("http",))
    )
    return {
        "sms": texts,
        "whatsapp": texts,
        "slack": posts,
        "email": mail,
        "http": forwards,
    }


def histories(settings: Settings) -> tuple[dict[str, AnyHistory], dict[str, str]]:
    """What reconciliation asks (SPEC §12): `{source: History}` for each source with live
    credentials, and `{source: why not}` for the others."""
    found: dict[str, AnyHistory] = {}
    skipped: dict[str, str] = {}
    sms = settings.channels.sms
    if sms.mode != "live":
        skipped["twilio"] = "channels.sms is in sandbox mode"
    elif not (sms.account_sid and sms.auth_token):
        skipped["twilio"] = "no credentials (channels.sms account_sid, auth_token)"
    else:
        sender = TwilioSender(
            account_sid=sms.account_sid, auth_token=sms.auth_token, api_base=sms.api_base
        )
        url = settings.server.public_url.rstrip("/") + "/webhooks/twilio/messages"
        found["twilio"] = TwilioHistory(sender, messages_url=url)
    stripe = settings.sources.stripe
    if stripe is None or not stripe.api_key:
        skipped["stripe"] = "no credentials (sources.stripe api_key)"
    else:
        hook = settings.server.public_url.rstrip("/") + "/webhooks/stripe"
        found["stripe"] = StripeHistory(stripe.api_key, api_base=stripe.api_base, webhook_url=hook)
    slack = settings.channels.slack
    if slack.mode != "live":
        skipped["slack"] = "channels.slack is in sandbox mode"
    elif not slack.bot_token:
        skipped["slack"] = "no credentials (channels.slack bot_token)"
    else:
        poster = SlackSender(bot_token=slack.bot_token, api_base=slack.api_base)
        url = settings.server.public_url.rstrip("/") + "/webhooks/slack/events"
        found["slack"] = SlackHistory(poster, events_url=url)
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

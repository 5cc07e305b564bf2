"""Wiring of provider adapters from settings: the one place the core meets `channels/`.

Only the HTTP app and the CLI import this module.
"""

from __future__ import annotations

from channels.base import InboundAdapter
from channels.mailgun import MailgunAdapter
from channels.sendgrid import SendgridAdapter
from channels.slack import SlackEventsAdapter, SlackInteractionsAdapter
from channels.standard import StandardWebhooksAdapter
from channels.stripe import StripeAdapter
from channels.twilio import TwilioAdapter
from router.clock import Clock
from router.config import Settings


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

"""Slack's message markup: the one escape every text from outside goes through on its way to
Slack (rule templates rendered for Slack, escalation posts, relays).

Slack reads `<!channel>`, `<@U123>` and `<https://x|label>` as mentions and links; escaped,
they show as typed. Slack documents only these three characters as needing it
(https://api.slack.com/reference/surfaces/formatting#escaping).
"""

from __future__ import annotations


def escape(text: str) -> str:
    """`&`, `<` and `>` as Slack's entities, so the text shows literally."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")

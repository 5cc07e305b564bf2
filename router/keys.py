"""The key formats that tie events, conversations and Slack threads together (SPEC §3, §12).

Each format is built and parsed here and nowhere else: channels build the keys of what they
receive, routing and the stores read them back. A contact's key (one person across channels)
is `statemachines.consent.contact_key`, the consent machine's own.

- A conversation over a number: `sms:+15551230001:+15557654321` (or `whatsapp:...`), the
  customer's number then ours, so the answer leaves from the number the customer wrote to.
- A conversation by email: `email:sam@example.com:support@example.com`.
- A Slack thread, and the dedupe key of a Slack message: `slack:C0123:1700000000.000100`.
- The lane of an event without a conversation: `event:01J...` (its id).
- A destination of rate limits and breakers: `sms:+15551230001` (the number it leaves from).
"""

from __future__ import annotations

from typing import NamedTuple

SLACK_PREFIX = "slack:"


class SlackThread(NamedTuple):
    """A Slack thread: the channel and the `ts` of its root message."""

    channel: str
    ts: str


def number_conversation(channel: str, customer: str, ours: str) -> str:
    """The conversation between a customer's number and ours on `sms` or `whatsapp`."""
    return f"{channel}:{customer}:{ours}"


def email_conversation(sender: str, recipient: str) -> str:
    """The conversation between a customer's address and the address they wrote to."""
    return f"email:{sender}:{recipient}"


def our_number(conversation_key: str) -> str | None:
    """The number of ours in a number conversation's key (`sms:+1...:+1...` -> the last)."""
    parts = conversation_key.split(":")
    return parts[-1] if len(parts) >= 3 and parts[-1] else None


def slack_thread(channel: str, ts: str) -> str:
    """The key of a Slack thread (or message): `slack:CHANNEL:TS`."""
    return f"{SLACK_PREFIX}{channel}:{ts}"


def parse_slack_thread(key: str) -> SlackThread | None:
    """`slack:CHANNEL:TS` -> its channel and ts; None for any other key."""
    if not key.startswith(SLACK_PREFIX):
        return None
    channel, sep, ts = key[len(SLACK_PREFIX) :].partition(":")
    return SlackThread(channel, ts) if sep and channel and ts else None


#: An event without a conversation is a lane of its own: `event:<event id>` (the stores' claim
#: query builds it in SQL).
EVENT_LANE_PREFIX = "event:"


def is_event_lane(lane: str) -> bool:
    """Whether a lane is one event's own rather than a conversation's."""
    return lane.startswith(EVENT_LANE_PREFIX)


def destination(channel: str, address: str) -> str:
    """A destination as rate limits and breakers know it: `sms:+15551230001`, `slack:C0123`
    (the address is the sender's: the number a text leaves from, the Slack channel)."""
    return f"{channel}:{address}"


def channel_of_destination(key: str) -> str:
    """The channel of a destination key (`sms:+1555...` -> `sms`)."""
    return key.partition(":")[0]

"""Twilio's parse: form fields of inbound messages and status callbacks into Events. Pure."""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import urlencode

import pytest
from hypothesis import given
from hypothesis import strategies as st

from channels.base import InboundRequest, PayloadError
from channels.twilio import TwilioAdapter
from router.events import Attachment, Channel, Contact, Event, EventStatus

RECEIVED_AT = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)
ACCOUNT = "AC" + "1" * 32
CUSTOMER = "+15551230001"
OURS = "+15559870000"


def parse(kind: str, params: dict[str, str] | list[tuple[str, str]]) -> list[Event]:
    body = urlencode(params).encode()
    inbound = InboundRequest(
        body=body,
        headers={},
        url="https://switchboard.example.com/webhooks/twilio/" + kind,
        content_type="application/x-www-form-urlencoded",
        received_at=RECEIVED_AT,
        correlation_id="corr-1",
    )
    parsed = TwilioAdapter(["token"], kind).parse(inbound)  # type: ignore[arg-type]
    assert parsed.ack.status == 200
    assert parsed.ack.media_type == "text/xml"
    assert b"<Response/>" in parsed.ack.body
    return parsed.events


def parse_one(kind: str, params: dict[str, str] | list[tuple[str, str]]) -> Event:
    events = parse(kind, params)
    assert len(events) == 1
    return events[0]


def sms(**extra: str) -> dict[str, str]:
    return {
        "MessageSid": "SM0001",
        "SmsMessageSid": "SM0001",
        "AccountSid": ACCOUNT,
        "From": CUSTOMER,
        "To": OURS,
        "Body": "Hello there",
        "NumMedia": "0",
        "NumSegments": "1",
        **extra,
    }


def status(**extra: str) -> dict[str, str]:
    return {
        "MessageSid": "SM0002",
        "MessageStatus": "delivered",
        "AccountSid": ACCOUNT,
        "From": OURS,
        "To": CUSTOMER,
        **extra,
    }


def test_sms_is_a_received_message_with_its_conversation() -> None:
    event = parse_one("messages", sms(FromCountry="US"))
    assert event.source == "twilio"
    assert event.type == "message.received"
    assert event.provider_type == "message"
    assert event.dedupe_key == "twilio:SM0001"
    assert event.channel is Channel.SMS
    assert event.contact == Contact(address=CUSTOMER)
    assert event.conversation_key == f"sms:{CUSTOMER}:{OURS}"
    assert event.text == "Hello there"
    assert event.attachments == ()
    assert event.status is EventStatus.RECEIVED
    assert event.received_at == RECEIVED_AT
    assert event.correlation_id == "corr-1"
    assert event.data == {
        "message_sid": "SM0001",
        "account_sid": ACCOUNT,
        "from": CUSTOMER,
        "to": OURS,
        "num_media": "0",
        "num_segments": "1",
        "from_country": "US",
    }


def test_event_id_is_a_ulid_of_the_receive_time() -> None:
    first, second = parse_one("messages", sms()), parse_one("messages", sms())
    assert len(first.id) == 26
    assert first.id != second.id
    assert first.id[:10] == second.id[:10]  # same millisecond, random tail


def test_mms_keeps_every_media_in_order() -> None:
    event = parse_one(
        "messages",
        sms(
            Body="",
            NumMedia="3",
            MediaUrl0="https://api.twilio.com/media/ME0",
            MediaContentType0="image/jpeg",
            MediaUrl1="https://api.twilio.com/media/ME1",
            MediaContentType1="video/mp4",
            MediaUrl2="https://api.twilio.com/media/ME2",
            MediaContentType2="application/pdf",
            MediaUrl3="https://api.twilio.com/media/beyond-num-media",
        ),
    )
    assert event.attachments == (
        Attachment(url="https://api.twilio.com/media/ME0", content_type="image/jpeg"),
        Attachment(url="https://api.twilio.com/media/ME1", content_type="video/mp4"),
        Attachment(url="https://api.twilio.com/media/ME2", content_type="application/pdf"),
    )
    assert event.text == ""
    assert event.data["num_media"] == "3"


def test_whatsapp_message_carries_the_profile_name() -> None:
    event = parse_one(
        "messages",
        sms(
            From=f"whatsapp:{CUSTOMER}",
            To=f"whatsapp:{OURS}",
            ProfileName="Ann Example",
            WaId=CUSTOMER.lstrip("+"),
        ),
    )
    assert event.channel is Channel.WHATSAPP
    assert event.contact == Contact(address=CUSTOMER, name="Ann Example")
    assert event.conversation_key == f"whatsapp:{CUSTOMER}:{OURS}"
    assert event.data["wa_id"] == CUSTOMER.lstrip("+")
    assert event.data["from"] == f"whatsapp:{CUSTOMER}"


def test_empty_profile_name_is_no_name() -> None:
    event = parse_one("messages", sms(ProfileName=""))
    assert event.contact == Contact(address=CUSTOMER)


def test_opt_out_type_is_kept_for_consent() -> None:
    event = parse_one("messages", sms(Body="stop", OptOutType="STOP"))
    assert event.data["opt_out_type"] == "STOP"
    assert event.text == "stop"


def test_legacy_sms_sid_is_enough() -> None:
    params = sms()
    del params["MessageSid"], params["SmsMessageSid"]
    params["SmsSid"] = "SM0009"
    assert parse_one("messages", params).dedupe_key == "twilio:SM0009"


@given(st.text(max_size=200))
def test_body_text_round_trips_exactly(body: str) -> None:
    assert parse_one("messages", sms(Body=body)).text == body


def test_status_callback_with_error_code() -> None:
    event = parse_one(
        "status",
        status(MessageStatus="undelivered", ErrorCode="30008", ErrorMessage="Unknown error"),
    )
    assert event.type == "message.status"
    assert event.provider_type == "message.undelivered"
    assert event.dedupe_key == "twilio:SM0002:undelivered"
    assert event.channel is Channel.SMS
    assert event.contact == Contact(address=CUSTOMER)
    assert event.conversation_key == f"sms:{CUSTOMER}:{OURS}"
    assert event.text is None
    assert event.data == {
        "message_sid": "SM0002",
        "account_sid": ACCOUNT,
        "from": OURS,
        "to": CUSTOMER,
        "error_code": "30008",
        "error_message": "Unknown error",
        "status": "undelivered",
    }


def test_each_status_of_one_message_is_its_own_event() -> None:
    keys = {
        parse_one("status", status(MessageStatus=name)).dedupe_key
        for name in ("sent", "delivered", "read")
    }
    assert keys == {"twilio:SM0002:sent", "twilio:SM0002:delivered", "twilio:SM0002:read"}


def test_status_without_from_has_no_conversation() -> None:
    params = status(To=f"whatsapp:{CUSTOMER}")
    del params["From"]
    event = parse_one("status", params)
    assert event.channel is Channel.WHATSAPP
    assert event.conversation_key is None


def test_legacy_sms_status_is_read() -> None:
    params = status()
    del params["MessageStatus"]
    params["SmsStatus"] = "sent"
    assert parse_one("status", params).data["status"] == "sent"


@pytest.mark.parametrize(
    ("kind", "params", "missing"),
    [
        (
            "messages",
            {k: v for k, v in sms().items() if "Sid" not in k or k == "AccountSid"},
            "MessageSid",
        ),
        ("messages", {**sms(), "MessageSid": "", "SmsMessageSid": ""}, "MessageSid"),
        ("messages", {k: v for k, v in sms().items() if k != "From"}, "From"),
        ("messages", {k: v for k, v in sms().items() if k != "To"}, "To"),
        ("status", {k: v for k, v in status().items() if k != "MessageSid"}, "MessageSid"),
        ("status", {k: v for k, v in status().items() if k != "MessageStatus"}, "MessageStatus"),
        ("status", {k: v for k, v in status().items() if k != "To"}, "To"),
    ],
    ids=[
        "message-without-sid",
        "message-with-empty-sid",
        "message-without-from",
        "message-without-to",
        "status-without-sid",
        "status-without-status",
        "status-without-to",
    ],
)
def test_missing_required_field_is_a_payload_error(
    kind: str, params: dict[str, str], missing: str
) -> None:
    with pytest.raises(PayloadError, match=missing):
        parse(kind, params)


@pytest.mark.parametrize("count", ["two", "1.5", "0x2"])
def test_num_media_not_a_number_is_a_payload_error(count: str) -> None:
    with pytest.raises(PayloadError, match="NumMedia"):
        parse("messages", sms(NumMedia=count))


def test_non_utf8_form_is_a_payload_error() -> None:
    inbound = InboundRequest(
        body=b"MessageSid=SM1&Body=\xff",
        headers={},
        url="https://switchboard.example.com/webhooks/twilio/messages",
        content_type="application/x-www-form-urlencoded",
        received_at=RECEIVED_AT,
        correlation_id="corr-1",
    )
    with pytest.raises(PayloadError):
        TwilioAdapter(["token"], "messages").parse(inbound)

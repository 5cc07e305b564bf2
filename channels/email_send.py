"""Email, outbound: `SmtpSender` hands `email` outbox rows to an SMTP server (aiosmtplib), the
email half of the dispatcher's senders (channels/outbound.py). Inbound email is
`channels/email.py` with its providers (`mailgun.py`, `sendgrid.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import string
from datetime import datetime
from email import policy
from email.message import EmailMessage
from email.utils import formatdate, parseaddr
from typing import TYPE_CHECKING, Any

import aiosmtplib

from channels.outbound import FailureKind, NotCheckable, Outgoing, SendFailed, Sent

if TYPE_CHECKING:
    from router.config import EmailChannelConfig

#: Subject of an email whose payload gives none.
DEFAULT_SUBJECT = "A message from Switchboard"
#: Characters an outbox id keeps in its Message-ID; any other is written `=XX` per UTF-8 byte
#: (so `:` becomes `=3A`): the result is a dot-atom, and distinct ids stay distinct.
_MSGID_KEEP = frozenset(string.ascii_letters + string.digits + "-_")
#: Bodies are built 7-bit clean (quoted-printable or base64 when not ASCII): the server need
#: not offer 8BITMIME. Serialised with CRLF; SMTPUTF8 only for a non-ASCII address.
_BUILD_POLICY = policy.SMTP.clone(cte_type="7bit")
_UTF8_POLICY = policy.SMTPUTF8.clone(cte_type="7bit")
_CONTROL = re.compile(r"[\x00-\x20\x7f<>]")


def outbox_message_id(outbox_id: str) -> str:
    """`<{id}@switchboard>`, the outbox id escaped into a valid msg-id: a resend carries the
    same Message-ID, so a duplicate is recognisable in the recipient's mailbox (RFC 5322
    §3.6.4)."""
    left = "".join(
        char if char in _MSGID_KEEP else "".join(f"={byte:02X}" for byte in char.encode())
        for char in outbox_id
    )
    return f"<{left}@switchboard>"


class _Mail:
    """One outgoing email: envelope addresses and the serialised message."""

    def __init__(self, message: Outgoing, configured_from: str | None) -> None:
        payload = message.payload
        from_ = configured_from or _text(payload.get("from"))
        if not from_:
            raise SendFailed(FailureKind.PERMANENT, "no From address: set channels.email.from")
        self.mail_from = _envelope_address(from_, "From")
        self.rcpt_to = _envelope_address(message.to, "recipient")
        self.utf8 = not (self.mail_from + self.rcpt_to).isascii()
        self.message_id = outbox_message_id(message.id)
        subject = _text(payload.get("subject")) or DEFAULT_SUBJECT
        mail = EmailMessage(policy=_BUILD_POLICY)
        try:
            mail["From"] = from_
            mail["To"] = message.to
            mail["Subject"] = " ".join(subject.split())  # no CR/LF: a header is one line
            mail["Date"] = formatdate(usegmt=True)
            mail["Message-ID"] = self.message_id
            mail.set_content(_text(payload.get("text")) or "")
            self.raw = mail.as_bytes(policy=_UTF8_POLICY if self.utf8 else _BUILD_POLICY)
        except (ValueError, UnicodeError) as exc:
            raise SendFailed(FailureKind.PERMANENT, f"the email cannot be built: {exc}") from exc


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value.strip() else None


def _envelope_address(value: str, what: str) -> str:
    """The addr-spec of `Name <addr>` or `addr`; PERMANENT if it is not an email address."""
    _, address = parseaddr(value)
    if "@" not in address or _CONTROL.search(address) or "\n" in value or "\r" in value:
        raise SendFailed(FailureKind.PERMANENT, f"{what} {value!r} is not an email address")
    return address


class SmtpSender:
    """Emails through one SMTP server (aiosmtplib), a connection per message.

    The phases are driven one by one (connect, EHLO, STARTTLS and AUTH when configured, MAIL,
    RCPT, DATA) because where a failure happens decides what it means (notes §3): before DATA
    nothing was accepted (4xx and lost connections transient, 5xx permanent); a 4xx or 5xx
    answer to DATA is the same; but a connection lost or timed out inside DATA, before the
    final reply, may follow a delivery: in doubt. SMTP has no way to ask afterwards.
    """

    channels: tuple[str, ...] = ("email",)

    def __init__(
        self,
        *,
        host: str,
        port: int = 25,
        from_: str | None = None,
        username: str | None = None,
        password: str | None = None,
        starttls: bool = False,
        timeout_seconds: float = 30.0,
        local_hostname: str | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self._from = from_
        self._username = username
        self._password = password
        self._starttls = starttls
        self._timeout = timeout_seconds
        self._local_hostname = local_hostname

    @classmethod
    def from_config(
        cls, config: EmailChannelConfig, *, timeout_seconds: float = 30.0
    ) -> SmtpSender:
        return cls(
            host=config.smtp_host,
            port=config.smtp_port,
            from_=config.from_,
            username=config.username,
            password=config.password,
            starttls=config.starttls,
            timeout_seconds=timeout_seconds,
        )

    def destination(self, message: Outgoing) -> str:
        return f"{self.host}:{self.port}"

    def units(self, message: Outgoing) -> int:
        return 1

    async def send(self, message: Outgoing) -> Sent:
        mail = _Mail(message, self._from)  # a message that cannot be built fails before I/O
        smtp = aiosmtplib.SMTP(
            hostname=self.host,
            port=self.port,
            timeout=self._timeout,
            start_tls=False,  # only when configured, in its own phase
            local_hostname=await self._hostname(),
        )
        try:
            await self._deliver(smtp, mail, self.destination(message))
            with contextlib.suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
                await smtp.quit(timeout=min(self._timeout, 5.0))  # accepted: only courtesy
        finally:
            smtp.close()  # also when cancelled
        return Sent(provider_message_id=mail.message_id.strip("<>"))

    async def _deliver(self, smtp: aiosmtplib.SMTP, mail: _Mail, where: str) -> None:
        """The SMTP conversation up to the 250 after DATA; SendFailed by the failed phase."""
        phase = "connect"
        try:
            async with asyncio.timeout(self._timeout):
                await smtp.connect()
                phase = "EHLO"
                await smtp.ehlo()
                if self._starttls:
                    phase = "STARTTLS"
                    await smtp.starttls()
                    await smtp.ehlo()
                if self._username:
                    phase = "AUTH"
                    await smtp.login(self._username, self._password or "")
                phase = "MAIL"
                await smtp.mail(mail.mail_from, **_utf8_options(smtp, mail))
                phase = "RCPT"
                await smtp.rcpt(mail.rcpt_to, encoding="utf-8" if mail.utf8 else "ascii")
                phase = "DATA"
                await smtp.data(mail.raw)
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            raise _smtp_failure(exc, phase, where) from exc

    async def find(self, message: Outgoing, since: datetime) -> Sent | None:
        raise NotCheckable("SMTP cannot be asked afterwards: the 250 after DATA is the receipt")

    async def start(self) -> None:
        return None  # nothing to build ahead

    async def close(self) -> None:
        return None  # no connection outlives a send

    async def _hostname(self) -> str:
        """The EHLO name, looked up once (aiosmtplib would call getfqdn on every connect)."""
        if self._local_hostname is None:
            self._local_hostname = await asyncio.to_thread(socket.getfqdn)
        return self._local_hostname


def _utf8_options(smtp: aiosmtplib.SMTP, mail: _Mail) -> dict[str, Any]:
    """MAIL options: SMTPUTF8 for a non-ASCII address, PERMANENT if the server lacks it."""
    if not mail.utf8:
        return {}
    if not smtp.supports_extension("smtputf8"):
        raise aiosmtplib.SMTPNotSupported("a non-ASCII address needs SMTPUTF8, not offered")
    return {"options": ["SMTPUTF8"], "encoding": "utf-8"}


def _smtp_failure(exc: BaseException, phase: str, where: str) -> SendFailed:
    """A failed phase, classified (notes §3)."""
    if isinstance(exc, aiosmtplib.SMTPResponseException) and 400 <= exc.code < 600:
        kind = FailureKind.PERMANENT if exc.code >= 500 else FailureKind.TRANSIENT
        reason = f"{where} answered {exc.code} at {phase}: {exc.message}"
        return SendFailed(kind, reason, code=str(exc.code))
    detail = str(exc) or type(exc).__name__
    if phase == "DATA":
        reason = f"{where} lost during DATA before its final reply, may be delivered: {detail}"
        return SendFailed(FailureKind.IN_DOUBT, reason)
    if type(exc) in (aiosmtplib.SMTPException, aiosmtplib.SMTPNotSupported):
        # STARTTLS or AUTH configured but not offered, SMTPUTF8 missing: retrying cannot help
        return SendFailed(FailureKind.PERMANENT, f"{where} at {phase}: {detail}")
    return SendFailed(FailureKind.TRANSIENT, f"{where} failed at {phase}: {detail}")

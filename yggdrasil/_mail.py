"""Outgoing e-mail: a supervised actor that drains a bounded queue.

Delivery is SMTP when ``mail.smtp_url`` is set; otherwise each message is written as an ``.eml``
file into ``<data-dir>/outbox/`` and its path is logged, so a developer can sign in with no mail
server. Submitting never waits for delivery: the answer to "send me a code" must not depend on
whether the address has an account, and a slow mail server must not slow the API.
"""

from __future__ import annotations

import logging
import os
import smtplib
import ssl
import time
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path
from urllib.parse import unquote, urlsplit

import msgspec
import trio

from actors import ChildSpec

from ._errors import ConfigError, YggdrasilError

log = logging.getLogger(__name__)


class Mail(msgspec.Struct, frozen=True):
    to: str
    subject: str
    body: str


class MailQueueFull(YggdrasilError):
    status = 503
    code = "unavailable"
    default_message = "cannot send e-mail right now, try again later"


class SmtpTarget(msgspec.Struct, frozen=True):
    host: str
    port: int
    mode: str  # "plain", "starttls", "tls"
    username: str | None
    password: str | None


def parse_smtp_url(url: str) -> SmtpTarget:
    """:class:`ConfigError` (which never repeats the URL: it may hold a password) unless ``url``
    names a scheme we speak, a host and a valid port."""
    modes = {"smtp": ("plain", 25), "smtp+starttls": ("starttls", 587), "smtps": ("tls", 465)}
    try:
        parts = urlsplit(url)
        hostname, explicit_port = parts.hostname, parts.port
    except ValueError:  # a port that is not a number or past 65535, a broken [IPv6] host
        raise ConfigError("mail.smtp_url has an invalid host or port") from None
    if parts.scheme not in modes:
        raise ConfigError("mail.smtp_url must start with smtp://, smtp+starttls:// or smtps://")
    if not hostname:
        raise ConfigError("mail.smtp_url names no host (smtp://host[:port])")
    mode, default_port = modes[parts.scheme]
    port = explicit_port or default_port
    return SmtpTarget(
        host=hostname,
        port=port,
        mode=mode,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
    )


class Mailer:
    def __init__(
        self,
        *,
        sender: str,
        outbox: Path,
        smtp_url: str = "",
        timeout_s: float = 10.0,
        queue_size: int = 1000,
        retries: int = 3,
    ) -> None:
        self.sender = sender
        self.outbox = outbox
        self.smtp = parse_smtp_url(smtp_url) if smtp_url else None
        self.timeout_s = timeout_s
        self.retries = retries
        self._send, self._receive = trio.open_memory_channel[EmailMessage](queue_size)
        self.sent = 0
        self.failed = 0

    def submit(self, mail: Mail) -> None:
        """Queue a message; :class:`MailQueueFull` when the queue is full (never blocks)."""
        message = EmailMessage()
        message["From"] = self.sender
        message["To"] = mail.to
        message["Subject"] = mail.subject
        message["Message-ID"] = make_msgid(domain="yggdrasil")
        message.set_content(mail.body)
        try:
            self._send.send_nowait(message)
        except trio.WouldBlock:
            raise MailQueueFull() from None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Deliver queued messages one at a time until cancelled."""
        task_status.started()
        async for message in self._receive:
            await self._deliver(message)

    async def _deliver(self, message: EmailMessage) -> None:
        message_id = message["Message-ID"]
        for attempt in range(1, self.retries + 1):
            try:
                if self.smtp is None:
                    path = await trio.to_thread.run_sync(self._write_file, message)
                    log.info("mail %s written to %s", message_id, path)
                else:
                    # The thread finishes its SMTP dialogue even if we are cancelled meanwhile;
                    # the socket timeout bounds it.
                    await trio.to_thread.run_sync(self._send_smtp, message)
                    log.info("mail %s sent", message_id)
                self.sent += 1
                return
            except (OSError, smtplib.SMTPException) as exc:
                log.warning(
                    "mail %s attempt %d failed: %s", message_id, attempt, type(exc).__name__
                )
                await trio.sleep(min(30.0, 0.5 * 2**attempt))
        self.failed += 1
        log.error("mail %s dropped after %d attempts", message_id, self.retries)

    def _write_file(self, message: EmailMessage) -> Path:
        self.outbox.mkdir(mode=0o700, parents=True, exist_ok=True)
        now_ns = time.time_ns()
        # Names sort in the order the messages were written.
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now_ns / 1e9))
        token = message["Message-ID"].strip("<>").split("@")[0]
        path = self.outbox / f"{stamp}.{now_ns % 10**9:09d}-{token}.eml"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(message.as_bytes())
        return path

    def _send_smtp(self, message: EmailMessage) -> None:
        target = self.smtp
        assert target is not None
        client: smtplib.SMTP
        if target.mode == "tls":
            client = smtplib.SMTP_SSL(
                target.host,
                target.port,
                timeout=self.timeout_s,
                context=ssl.create_default_context(),
            )
        else:
            client = smtplib.SMTP(target.host, target.port, timeout=self.timeout_s)
        with client:
            if target.mode == "starttls":
                client.starttls(context=ssl.create_default_context())
            if target.username is not None:
                client.login(target.username, target.password or "")
            client.send_message(message)


def mail_child(mailer: Mailer) -> ChildSpec:
    """The ``mail`` child: delivers what ``mailer`` queued, one message at a time. A restart
    keeps the queue (it lives in the mailer); a message in delivery is lost with the run."""
    return ChildSpec("mail", mailer.run, shutdown_s=1.0)

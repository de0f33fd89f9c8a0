"""Mail transports behind one small interface: SMTP in production, a folder of `.eml` files by default.

Failures are sorted into two classes the sender acts on: temporary (4xx, connection trouble: retry
later) and permanent (5xx: retrying cannot help).

Example:
    >>> transport = transport_from_settings(get_settings())
    >>> transport.send(message)
"""

from __future__ import annotations

import os
import re
import smtplib
import ssl
from email.message import EmailMessage
from pathlib import Path
from typing import Protocol

from leadsync.config import Settings


class MailError(Exception):
    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class TemporaryMailError(MailError):
    """Try again later: 4xx replies, refused or dropped connections, timeouts."""


class PermanentMailError(MailError):
    """Do not retry: 5xx replies (unknown mailbox, rejected content)."""


class MailTransport(Protocol):
    def send(self, message: EmailMessage) -> None: ...


class SmtpTransport:
    """Delivers through an SMTP server (STARTTLS and login when configured)."""

    def __init__(self, settings: Settings) -> None:
        self.host = settings.smtp_host or "localhost"
        self.port = settings.smtp_port
        self.timeout = settings.smtp_timeout
        self.starttls = settings.smtp_starttls
        self.username = settings.smtp_username
        self._password = settings.smtp_password

    def __repr__(self) -> str:  # never show the password
        return f"SmtpTransport({self.host}:{self.port}, starttls={self.starttls})"

    def send(self, message: EmailMessage) -> None:
        try:
            with smtplib.SMTP(self.host, self.port, timeout=self.timeout) as smtp:
                if self.starttls:
                    smtp.starttls(context=ssl.create_default_context())
                if self.username and self._password:
                    smtp.login(self.username, self._password.get_secret_value())
                smtp.send_message(message)
        except smtplib.SMTPRecipientsRefused as error:
            codes = [code for code, _ in error.recipients.values()]
            raise _classify(min(codes), f"recipient refused: {codes}") from None
        except smtplib.SMTPResponseException as error:
            raise _classify(error.smtp_code, _text(error.smtp_error)) from None
        except (smtplib.SMTPException, OSError) as error:
            raise TemporaryMailError(f"SMTP connection failed: {error.__class__.__name__}: {error}") from None


def _classify(code: int, text: str) -> MailError:
    error_class = PermanentMailError if 500 <= code < 600 else TemporaryMailError
    return error_class(f"SMTP {code}: {text}", code)


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


class FolderTransport:
    """Writes each message as `<folder>/<message-id>.eml`, for the embedded default and for eyeballing."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def send(self, message: EmailMessage) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        name = re.sub(r"[^A-Za-z0-9._-]", "_", str(message["Message-ID"]).strip("<>")) + ".eml"
        temporary = self.folder / f".{name}.tmp"
        temporary.write_bytes(message.as_bytes())
        os.replace(temporary, self.folder / name)  # readers never see half a file


def transport_from_settings(settings: Settings) -> MailTransport:
    if settings.smtp_host:
        return SmtpTransport(settings)
    return FolderTransport(settings.mail_outbox_dir)

"""Mail transports behind one small interface: SMTP in production, a folder of `.eml` files by default.

SMTP speaks to relays the way they expect (SMTP_SECURITY): implicit TLS on 465, STARTTLS elsewhere,
required for any host that is not loopback; the certificate and its host name are always verified
(system CAs, or SMTP_CA_FILE). Credentials never go in clear text to a non-local host.

Failures are sorted into two classes the sender acts on: temporary (4xx, connection trouble, TLS not
offered or not verifiable: retry later, as Postfix defers mail when required TLS fails) and permanent
(5xx, or a configuration that would leak the login: retrying cannot help).

Connection reuse: inside `with transport.batch():` every `send` goes over one connection (TLS and login
once), as relays expect of bulk senders and as 300 emails/s needs (a fresh connection with STARTTLS costs
a few ms and several round trips). When the relay offers PIPELINING, a message's MAIL, RCPT and DATA go in one
write (pipelining.py: two round trips a message instead of four). At most MESSAGES_PER_CONNECTION messages go
over one connection (relays such as Gmail's cut a session near 100). A connection dropped mid-batch is handled
by where it broke: before the message's content (MAIL/RCPT/DATA failed: a relay closed an idle connection, or
said 421) nothing of this message reached the server, so it is sent again at once over a fresh connection;
once its content went out the server may hold it, so the send fails as temporary and the email claim state
machine (worker/mail/sending.py) retries it later with the same Message-ID, exactly as without reuse. Nothing
is lost, and a message is never re-sent by the transport itself once its content started.

Example:
    >>> plan_connection("smtp.postmarkapp.com", 587, "auto", has_credentials=True)
    ConnectionPlan(tls='starttls', tls_required=True, loopback=False)
    >>> transport = transport_from_settings(get_settings())
    >>> transport.send(message)
    >>> with transport.batch():          # one connection for many messages
    ...     for message in messages:
    ...         transport.send(message)
"""

from __future__ import annotations

import ipaddress
import os
import smtplib
import ssl
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from email.message import EmailMessage
from functools import lru_cache
from pathlib import Path
from typing import Literal, Protocol

from leadsync.config import Settings
from leadsync.worker.mail.addresses import outbox_file_name
from leadsync.worker.mail.errors import MailError, PermanentMailError, TemporaryMailError
from leadsync.worker.mail.pipelining import Pipelining

__all__ = [
    "FolderTransport",
    "MailError",
    "MailTransport",
    "PermanentMailError",
    "SmtpTransport",
    "TemporaryMailError",
    "transport_from_settings",
]

Security = Literal["auto", "starttls", "tls", "none"]
IMPLICIT_TLS_PORT = 465  # RFC 8314 "submissions"
MESSAGES_PER_CONNECTION = 100  # Gmail's relay closes a session near 100 messages; others allow more


class MailTransport(Protocol):
    def send(self, message: EmailMessage) -> None: ...

    def batch(self) -> AbstractContextManager[None]: ...


class _SMTP(Pipelining):
    pass


class _SMTP_SSL(Pipelining, smtplib.SMTP_SSL):
    pass


def _connection_lost(error: BaseException) -> bool:
    """The connection is unusable: closed, reset, timed out, or the server said 421 (closing)."""
    if isinstance(error, smtplib.SMTPResponseException):
        return error.smtp_code == 421
    return isinstance(error, OSError) and not isinstance(error, smtplib.SMTPRecipientsRefused)


@dataclass(frozen=True)
class ConnectionPlan:
    """How to talk to the relay: `tls` is implicit (TLS from the first byte), starttls, or none."""

    tls: Literal["implicit", "starttls", "none"]
    tls_required: bool  # False only for STARTTLS to a loopback host that does not offer it
    loopback: bool


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and `localhost` only: a name is never resolved (DNS could point it anywhere)."""
    name = host.strip().strip("[]").rstrip(".").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def clear_text_login_refusal(host: str, security: Security, has_credentials: bool) -> str | None:
    """Why this configuration must not send (a login in clear text to a non-local host), else None."""
    if has_credentials and security == "none" and not is_loopback(host):
        return (
            f"SMTP_SECURITY=none would send SMTP_USERNAME/SMTP_PASSWORD in clear text to {host}: refused. "
            "Use SMTP_SECURITY=auto (STARTTLS on 587, TLS on 465) or unset the credentials."
        )
    return None


def plan_connection(host: str, port: int, security: Security, has_credentials: bool) -> ConnectionPlan:
    """The decision, as a pure function; PermanentMailError when the configuration would leak the login."""
    refusal = clear_text_login_refusal(host, security, has_credentials)
    if refusal:
        raise PermanentMailError(refusal)
    loopback = is_loopback(host)
    if security == "tls" or (security == "auto" and port == IMPLICIT_TLS_PORT):
        return ConnectionPlan("implicit", True, loopback)
    if security == "none":
        return ConnectionPlan("none", False, loopback)
    # starttls: always required. auto: required off this machine; on loopback used when offered (a local
    # Postfix without a certificate still works), and the login then never leaves the machine.
    return ConnectionPlan("starttls", security == "starttls" or not loopback, loopback)


def tls_context(ca_file: Path | None) -> ssl.SSLContext:
    """Verifies the certificate chain and the host name (create_default_context does both), TLS 1.2+."""
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def shared_tls_context(ca_file: Path | None) -> ssl.SSLContext:
    """`tls_context`, made once a process per CA file version: loading the system CAs costs ~30-50 ms of CPU,
    which a connection a batch paid again every time (10% of a sending worker's CPU, measured with py-spy).
    A changed SMTP_CA_FILE (new mtime or size) gets a new context; system CAs are read once per process."""
    if ca_file is None:
        return _context_for(None, None)
    try:
        stat = ca_file.stat()
    except OSError:
        return tls_context(ca_file)  # raises as before: the file is missing or unreadable
    return _context_for(ca_file, (stat.st_mtime_ns, stat.st_size))


@lru_cache(maxsize=4)
def _context_for(ca_file: Path | None, version: tuple[int, int] | None) -> ssl.SSLContext:
    return tls_context(ca_file)


class SmtpTransport:
    """Delivers through an SMTP server: TLS as planned by `plan_connection`, login when configured."""

    def __init__(self, settings: Settings) -> None:
        self.host = settings.smtp_host or "localhost"
        self.port = settings.smtp_port
        self.timeout = settings.smtp_timeout
        self.security: Security = settings.smtp_security
        self.ca_file = settings.smtp_ca_file
        self.username = settings.smtp_username
        self._password = settings.smtp_password
        # The connection held open by `batch()` (one per process: the Celery prefork pool runs one task at a
        # time; a thread pool would need a transport per thread).
        self._held: _SMTP | _SMTP_SSL | None = None
        self._held_messages = 0
        self._batching = False
        self.connections = 0  # opened so far, for tests and benchmarks

    def __repr__(self) -> str:  # never show the password
        return f"SmtpTransport({self.host}:{self.port}, security={self.security})"

    @property
    def _credentials(self) -> tuple[str, str] | None:
        password = self._password.get_secret_value() if self._password else ""
        return (self.username, password) if self.username and password else None

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Every `send` inside goes over one held connection (reopened when it drops or is full)."""
        self._batching = True
        try:
            yield
        finally:
            self._batching = False
            self._release(polite=True)

    def send(self, message: EmailMessage) -> None:
        plan = plan_connection(self.host, self.port, self.security, self._credentials is not None)
        try:
            self._send(plan, message)
        except smtplib.SMTPRecipientsRefused as error:
            codes = [code for code, _ in error.recipients.values()]
            raise _classify(min(codes), f"recipient refused: {codes}") from None
        except smtplib.SMTPResponseException as error:
            raise _classify(error.smtp_code, _text(error.smtp_error)) from None
        except (smtplib.SMTPException, OSError) as error:  # ssl.SSLError (a failed verification) is an OSError
            raise TemporaryMailError(f"SMTP connection failed: {error.__class__.__name__}: {error}") from None

    def _send(self, plan: ConnectionPlan, message: EmailMessage) -> None:
        while True:
            reused = self._held is not None
            smtp = self._held or self._open(plan)
            smtp.data_started = False
            try:
                smtp.send_message(message)
            except BaseException as error:
                lost = _connection_lost(error)
                if lost or not self._batching:
                    self._release(polite=not lost)
                if lost and reused and not smtp.data_started:
                    continue  # a held connection had gone stale before this message's DATA: send on a fresh one
                raise
            self._held_messages += 1
            if not self._batching or self._held_messages >= MESSAGES_PER_CONNECTION:
                self._release(polite=True)
            return

    def _open(self, plan: ConnectionPlan) -> _SMTP | _SMTP_SSL:
        smtp = self._connect(plan)
        try:
            self._login(smtp, plan)
        except BaseException:
            smtp.close()
            raise
        self.connections += 1
        self._held, self._held_messages = smtp, 0
        return smtp

    def _release(self, polite: bool) -> None:
        """Close the held connection: with QUIT when it still works, else just the socket."""
        smtp, self._held = self._held, None
        if smtp is None:
            return
        try:
            if polite:
                smtp.quit()
        except (smtplib.SMTPException, OSError):
            pass  # every message on it already has its answer; a failed goodbye changes none of them
        finally:
            smtp.close()

    def _connect(self, plan: ConnectionPlan) -> _SMTP | _SMTP_SSL:
        if plan.tls == "implicit":
            return _SMTP_SSL(self.host, self.port, timeout=self.timeout, context=shared_tls_context(self.ca_file))
        smtp = _SMTP(self.host, self.port, timeout=self.timeout)
        try:
            if plan.tls == "starttls":
                smtp.ehlo()
                if smtp.has_extn("starttls"):
                    # server_hostname = self.host: the name is checked
                    smtp.starttls(context=shared_tls_context(self.ca_file))
                    smtp.ehlo()
                elif plan.tls_required:
                    # A relay that stops offering STARTTLS may be a downgrade on the path: wait, as Postfix does.
                    raise TemporaryMailError(
                        f"{self.host}:{self.port} does not offer STARTTLS (SMTP_SECURITY={self.security}): "
                        "nothing sent in clear text"
                    )
        except BaseException:
            smtp.close()
            raise
        return smtp

    def _login(self, smtp: smtplib.SMTP, plan: ConnectionPlan) -> None:
        credentials = self._credentials
        if credentials is None:
            return
        encrypted = isinstance(smtp.sock, ssl.SSLSocket)
        if not encrypted and not plan.loopback:  # plan_connection makes this unreachable; kept as the last guard
            raise PermanentMailError(f"refusing to send the SMTP login in clear text to {self.host}")
        smtp.login(*credentials)


def _classify(code: int, text: str) -> MailError:
    error_class = PermanentMailError if 500 <= code < 600 else TemporaryMailError
    return error_class(f"SMTP {code}: {text}", code)


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


class FolderTransport:
    """Writes each message as `<folder>/<message-id>.eml` (`addresses.outbox_file_name`), for the embedded
    default and for eyeballing."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def batch(self) -> AbstractContextManager[None]:
        """Nothing to hold open: each message is its own file."""
        return nullcontext()

    def send(self, message: EmailMessage) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        name = outbox_file_name(str(message["Message-ID"]))
        temporary = self.folder / f".{name}.tmp"
        temporary.write_bytes(message.as_bytes())
        os.replace(temporary, self.folder / name)  # readers never see half a file


def transport_from_settings(settings: Settings) -> MailTransport:
    if settings.smtp_host:
        return SmtpTransport(settings)
    return FolderTransport(settings.mail_outbox_dir)

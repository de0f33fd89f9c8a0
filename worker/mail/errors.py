"""The two failure classes the sender acts on, shared by composing and transports; they are also
leadsync/errors.py's TemporaryError and PermanentError, the answer the CRM's failures give too.

Example:
    >>> raise TemporaryMailError("SMTP 451: try again later", 451)
"""

from __future__ import annotations

from leadsync.errors import DeliveryError, PermanentError, TemporaryError


class MailError(DeliveryError):
    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class TemporaryMailError(MailError, TemporaryError):
    """Try again later: 4xx replies, refused or dropped connections, timeouts, TLS trouble."""


class PermanentMailError(MailError, PermanentError):
    """Do not retry: 5xx replies (unknown mailbox, rejected content), unsafe configuration."""


class UnsendableMessage(PermanentMailError):
    """The message cannot be written as plain-ASCII headers (e.g. a non-ASCII mailbox name)."""

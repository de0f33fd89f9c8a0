"""The two failure classes the sender acts on, shared by composing and transports.

Example:
    >>> raise TemporaryMailError("SMTP 451: try again later", 451)
"""

from __future__ import annotations


class MailError(Exception):
    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class TemporaryMailError(MailError):
    """Try again later: 4xx replies, refused or dropped connections, timeouts, TLS trouble."""


class PermanentMailError(MailError):
    """Do not retry: 5xx replies (unknown mailbox, rejected content), unsafe configuration."""


class UnsendableMessage(PermanentMailError):
    """The message cannot be written as plain-ASCII headers (e.g. a non-ASCII mailbox name)."""

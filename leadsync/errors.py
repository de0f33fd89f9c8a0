"""The one question every delivery failure answers: try again later, or never. Mail
(worker/mail/errors.py) and the CRM (worker/crm/port.py) keep their own classes, with their own details
(an SMTP code, an HTTP status, HubSpot's errors); each also derives from one of the two below, so code that
only needs the answer catches `TemporaryError` or `PermanentError` and works for both.

Temporary: the work stays owed and is tried again (after a backoff, a pause, or a fixed token).
Permanent: retrying the same work cannot succeed; it is recorded as failed.

Example:
    >>> from leadsync.worker.mail.errors import TemporaryMailError
    >>> isinstance(TemporaryMailError("SMTP 451: try again later", 451), TemporaryError)
    True
"""

from __future__ import annotations


class DeliveryError(Exception):
    """Sending an email or writing to the CRM failed."""


class TemporaryError(DeliveryError):
    """Try again later: the work is kept (timeouts, 4xx SMTP replies, HubSpot 5xx/429, a refused token)."""


class PermanentError(DeliveryError):
    """Do not retry the same work: it cannot succeed (an unknown mailbox, HubSpot rejecting the input)."""

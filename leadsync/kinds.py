"""The names stored in rows and sent in messages, each spelled once: form kinds, email kinds and
newsletter statuses. StrEnums, so a member is the very string stored before they existed (a row written
by an older version reads the same, and no migration is needed).

Example:
    >>> FormKind.INFO_PACKET == "info_packet", NewsletterStatus("subscribed") is NewsletterStatus.SUBSCRIBED
    (True, True)
"""

from __future__ import annotations

from enum import StrEnum


class FormKind(StrEnum):
    """`submissions.form`: which form a submission came from (the URL says info-packet, the row info_packet)."""

    NEWSLETTER = "newsletter"
    INFO_PACKET = "info_packet"


class EmailKind(StrEnum):
    """`email_sends.kind`: config/emails.toml's sections."""

    INFO_PACKET = "info_packet"
    NEWSLETTER_CONFIRM = "newsletter_confirm"


class NewsletterStatus(StrEnum):
    """`contacts.newsletter_status`: double opt-in, none -> pending -> subscribed -> unsubscribed."""

    NONE = "none"
    PENDING = "pending"
    SUBSCRIBED = "subscribed"
    UNSUBSCRIBED = "unsubscribed"

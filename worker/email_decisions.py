"""Which emails a submission earns: pure rules, no I/O (worker/intake.py queues what they decide).

- The info packet: one per person per window (PACKET_RESEND_WINDOW_DAYS), counting sent and queued ones.
- The newsletter confirmation: a newsletter form, or any form with its opt-in box ticked, asks for one
  (double opt-in; OPTIN_RESEND_WINDOW_HOURS stops list-bombing a stranger's address).

Example:
    >>> packet_due(None, now, timedelta(hours=24)), packet_due(now - timedelta(hours=1), now, timedelta(hours=24))
    (True, False)
    >>> subscribes("info_packet", {"newsletter_opt_in": True})
    True
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from leadsync.kinds import FormKind


def packet_due(last_sent_at: datetime | None, now: datetime, window: timedelta) -> bool:
    """One email of a kind per person per window: due when none was sent (or queued) within it."""
    return last_sent_at is None or now - last_sent_at >= window


def subscribes(form: str, fields: Mapping[str, Any]) -> bool:
    """Whether the submission asks for the newsletter (a confirmation email, then `subscribed`)."""
    return form == FormKind.NEWSLETTER or bool(fields.get("newsletter_opt_in"))

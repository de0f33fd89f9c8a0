"""Merging a submission into a contact: pure rules, no I/O.

Newer non-empty values win, judged by when each value was submitted, so two workers processing an
old and a new submission out of order still end on the newest values. Lifecycle stages never move
backwards.

Example:
    >>> merge_fields({"phone": "1"}, {"phone": "2026-01-02T00:00:00+00:00"}, {"phone": "2"}, jan_1)
    Merge(changes={}, times={...})          # an older submission does not overwrite a newer value
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from leadsync.kinds import FormKind

# Contact fields a submission can set, in the order sales read them.
CONTACT_FIELDS = (
    "first_name",
    "last_name",
    "phone",
    "interest",
    "message",
    "hutk",
    "page_url",
    "utm_source",
    "utm_medium",
    "utm_campaign",
    "utm_term",
    "utm_content",
)

# HubSpot's default lifecycle stages, earliest first.
STAGES = (
    "subscriber",
    "lead",
    "marketingqualifiedlead",
    "salesqualifiedlead",
    "opportunity",
    "customer",
    "evangelist",
)

FORM_STAGE = {FormKind.NEWSLETTER: "subscriber", FormKind.INFO_PACKET: "lead"}


@dataclass(frozen=True)
class Merge:
    changes: dict[str, Any]  # field -> new value
    times: dict[str, str]  # field -> ISO time of the submission that set the value


def merge_fields(
    current: Mapping[str, Any], times: Mapping[str, str], incoming: Mapping[str, Any], at: datetime
) -> Merge:
    """Apply `incoming` (submitted at `at`) over `current`; empty incoming values never erase."""
    changes: dict[str, Any] = {}
    new_times = dict(times)
    for name, value in incoming.items():
        if value is None or value == "":
            continue
        set_at = times.get(name)
        if set_at is not None and datetime.fromisoformat(set_at) > at:
            continue  # a newer submission already set this field
        if current.get(name) != value:
            changes[name] = value
        new_times[name] = at.isoformat()
    return Merge(changes, new_times)


def later_stage(current: str | None, incoming: str) -> str:
    """The later of two lifecycle stages (unknown stages count as earliest)."""
    if current is None:
        return incoming
    rank = {stage: index for index, stage in enumerate(STAGES)}
    return incoming if rank.get(incoming, -1) > rank.get(current, -1) else current


def submission_values(form: str, fields: Mapping[str, Any], page_url: str | None, utm: Mapping[str, Any]) -> dict:
    """The contact fields a submission carries."""
    values = {name: fields.get(name) for name in CONTACT_FIELDS}
    values["page_url"] = page_url
    values.update({name: utm.get(name) for name in CONTACT_FIELDS if name.startswith("utm_")})
    if form != FormKind.INFO_PACKET:
        values["message"] = None
    return values

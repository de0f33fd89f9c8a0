"""The form-field -> HubSpot-property mapping from `config/hubspot_mapping.toml`, and applying it.

Two properties get special care. `lifecyclestage` is sent only when leadsync's stage moved past the
one it last wrote (`Contact.hubspot_stage`), so a stage sales set later in HubSpot (opportunity,
customer) is never written back to `lead`; for a record leadsync has not written yet, HubSpot's own
rule (stages only move forward unless cleared) protects it. `email` is left out of updates by record id,
so a record whose email sales changed keeps it (and no duplicate is made).

Example:
    >>> mapping = load_mapping(settings.hubspot_mapping_path)
    >>> contact_properties(contact, mapping)
    {'email': 'ann@example.org', 'firstname': 'Ann', 'lifecyclestage': 'lead', ...}
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class PropertySpec:
    field: str
    hubspot: str
    custom: bool = False
    label: str = ""
    type: str = "string"
    field_type: str = "text"
    options: tuple[str, ...] = ()
    sync: bool = True


@dataclass(frozen=True)
class Mapping:
    group_name: str
    group_label: str
    properties: tuple[PropertySpec, ...] = field(default_factory=tuple)

    @property
    def custom(self) -> tuple[PropertySpec, ...]:
        return tuple(spec for spec in self.properties if spec.custom and spec.sync)


def load_mapping(path: Path) -> Mapping:
    with path.open("rb") as file:
        data = tomllib.load(file)
    specs = tuple(
        PropertySpec(**{**item, "options": tuple(item.get("options", ()))}) for item in data.get("property", [])
    )
    return Mapping(data["group"]["name"], data["group"]["label"], specs)


def format_value(value: Any) -> str | None:
    """HubSpot takes every value as a string; datetimes as ISO 8601 in UTC with milliseconds."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


STAGE_PROPERTY = "lifecyclestage"
EMAIL_PROPERTY = "email"


def contact_properties(contact: Any, mapping: Mapping, by_id: bool = False) -> dict[str, str]:
    """The HubSpot properties for `contact`; empty values are left out so they never blank HubSpot's.

    `by_id`: the write goes to a record leadsync knows, so neither the email nor an unchanged lifecycle
    stage is sent (see the module docstring).
    """
    properties: dict[str, str] = {}
    for spec in mapping.properties:
        if not spec.sync or (by_id and spec.hubspot == EMAIL_PROPERTY):
            continue
        value = format_value(getattr(contact, spec.field, None))
        if value is None:
            continue
        if by_id and spec.hubspot == STAGE_PROPERTY and value == getattr(contact, "hubspot_stage", None):
            continue  # already written to this record; sales may have moved it on since
        properties[spec.hubspot] = value
    return properties

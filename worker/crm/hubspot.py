"""HubSpot behind a small interface, through the official `hubspot-api-client`.

It sorts HubSpot's answers into the classes the sync acts on, passes an explicit timeout on every
call (the client has none), and keeps one API object per process (each attribute access in the
client builds a new one).

Example:
    >>> crm = HubSpotCrm(token="pat-...", base_url="https://api.hubapi.com", timeout=10)
    >>> outcome = crm.upsert_by_email([UpsertInput("ann@example.org", {"firstname": "Ann"}, trace_id="17")])
    >>> outcome.ids
    {'ann@example.org': '151'}
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import urllib3
from hubspot import HubSpot
from hubspot.crm.contacts import (
    BatchInputSimplePublicObjectBatchInputUpsert,
    SimplePublicObjectBatchInputUpsert,
)
from hubspot.crm.contacts.exceptions import ApiException as ContactsApiException
from hubspot.crm.properties import OptionInput, PropertyCreate, PropertyGroupCreate
from hubspot.crm.properties.exceptions import ApiException as PropertiesApiException

from leadsync.worker.crm.mapping import Mapping

API_ERRORS = (ContactsApiException, PropertiesApiException)
TRANSPORT_ERRORS = (urllib3.exceptions.HTTPError, OSError)


class CrmError(Exception):
    """Base of the failure classes below; `status` is HubSpot's HTTP status when there was one."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class CrmTemporaryError(CrmError):
    """5xx, timeouts, connection errors: back off and try again."""


class CrmRateLimited(CrmError):
    """429: wait `retry_after` seconds (HubSpot's Retry-After, else the rest of the window)."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message, 429)
        self.retry_after = retry_after


class CrmAuthError(CrmError):
    """401/403: the token is wrong or lacks scopes. Retrying cannot help until a human acts."""


class CrmRejected(CrmError):
    """400 for the whole batch; `errors` carries HubSpot's per-error details."""

    def __init__(self, message: str, errors: list[dict[str, Any]]) -> None:
        super().__init__(message, 400)
        self.errors = errors


@dataclass(frozen=True)
class UpsertInput:
    email: str
    properties: dict[str, str]
    trace_id: str  # our contact id: HubSpot echoes it on per-input errors


@dataclass(frozen=True)
class InputError:
    code: str  # HubSpot's error code, e.g. INVALID_EMAIL, PROPERTY_DOESNT_EXIST
    message: str


@dataclass
class UpsertOutcome:
    ids: dict[str, str] = field(default_factory=dict)  # lowercased email -> HubSpot record id
    errors: dict[str, InputError] = field(default_factory=dict)  # trace id -> why HubSpot refused it


def _body(error: Any) -> dict[str, Any]:
    try:
        return json.loads(error.body or "{}")
    except (TypeError, ValueError):
        return {}


def classify(error: BaseException) -> CrmError:
    """Map a client exception to the failure class the sync acts on."""
    if isinstance(error, CrmError):
        return error
    if isinstance(error, API_ERRORS):
        status, body = error.status or 0, _body(error)
        message = f"HubSpot {status}: {body.get('message') or error.reason}"
        if status == 429:
            headers = {k.lower(): v for k, v in (error.headers or {}).items()}
            retry_after = headers.get("retry-after")
            interval_ms = headers.get("x-hubspot-ratelimit-interval-milliseconds")
            wait = float(retry_after) if retry_after else float(interval_ms or 10_000) / 1000
            return CrmRateLimited(message, wait)
        if status in (401, 403):
            return CrmAuthError(message, status)
        if status == 400:
            return CrmRejected(message, body.get("errors") or [body])
        if status == 0 or status >= 500 or status in (408, 423):
            return CrmTemporaryError(message, status)
        return CrmRejected(message, [body])
    if isinstance(error, TRANSPORT_ERRORS):
        return CrmTemporaryError(f"HubSpot unreachable: {error.__class__.__name__}: {error}")
    raise error


class HubSpotCrm:
    """The HubSpot contacts and properties APIs, one client per process."""

    def __init__(self, token: str, base_url: str, timeout: float) -> None:
        client = HubSpot(access_token=token, host=base_url.rstrip("/"))
        self._batch = client.crm.contacts.batch_api
        self._properties = client.crm.properties.core_api
        self._groups = client.crm.properties.groups_api
        self.timeout = timeout

    def __repr__(self) -> str:  # never show the token
        return f"HubSpotCrm(timeout={self.timeout})"

    def upsert_by_email(self, inputs: list[UpsertInput]) -> UpsertOutcome:
        """One batch upsert keyed by email (at most 100 inputs, one per email).

        Every input carries an objectWriteTraceId, so HubSpot answers one bad input with a 207
        listing it instead of rejecting the whole batch.
        """
        batch = BatchInputSimplePublicObjectBatchInputUpsert(
            inputs=[
                SimplePublicObjectBatchInputUpsert(
                    id=item.email,
                    id_property="email",
                    object_write_trace_id=item.trace_id,
                    properties=item.properties,
                )
                for item in inputs
            ]
        )
        try:
            response = self._batch.upsert(batch, _request_timeout=self.timeout)
        except Exception as error:
            raise classify(error) from error
        outcome = UpsertOutcome()
        for record in response.results or []:
            email = (record.properties or {}).get("email")
            if email:
                outcome.ids[email.lower()] = record.id
        for error in getattr(response, "errors", None) or []:
            details = error.errors or []
            code = (details[0].code if details and details[0].code else None) or error.category or "ERROR"
            for trace_id in (error.context or {}).get("objectWriteTraceId", []):
                outcome.errors[trace_id] = InputError(code, error.message or code)
        return outcome

    def bootstrap(self, mapping: Mapping) -> list[str]:
        """Create the property group and the custom properties that are missing; returns what was created."""
        created: list[str] = []
        try:
            groups = {group.name for group in self._groups.get_all("contacts", _request_timeout=self.timeout).results}
            if mapping.group_name not in groups:
                self._groups.create(
                    "contacts",
                    PropertyGroupCreate(name=mapping.group_name, label=mapping.group_label),
                    _request_timeout=self.timeout,
                )
                created.append(f"group {mapping.group_name}")
            existing = {p.name for p in self._properties.get_all("contacts", _request_timeout=self.timeout).results}
            for spec in mapping.custom:
                if spec.hubspot in existing:
                    continue
                options = [
                    OptionInput(label=o, value=o, display_order=i, hidden=False) for i, o in enumerate(spec.options)
                ]
                self._properties.create(
                    "contacts",
                    PropertyCreate(
                        name=spec.hubspot,
                        label=spec.label or spec.hubspot,
                        type=spec.type,
                        field_type=spec.field_type,
                        group_name=mapping.group_name,
                        options=options or None,
                    ),
                    _request_timeout=self.timeout,
                )
                created.append(f"property {spec.hubspot}")
        except Exception as error:
            raise classify(error) from error
        return created

"""HubSpot's wire format, apart from the calls: which client exceptions are which failure class, how a
batch answer (JSON, 200 or 207) becomes a WriteOutcome, and the records the adapter keeps (its retry
policy, what it saw of the rate limits). worker/crm/hubspot.py makes the calls.

Example:
    >>> classify(ContactsApiException(status=503, reason="Service Unavailable"))
    CrmTemporaryError('HubSpot 503: Service Unavailable')
    >>> batch_outcome({"results": [{"id": "151", "objectWriteTraceId": "17"}]}).ids
    {'17': '151'}
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import urllib3
from hubspot.communication_preferences.exceptions import ApiException as PreferencesApiException
from hubspot.crm.contacts.exceptions import ApiException as ContactsApiException
from hubspot.crm.objects.notes.exceptions import ApiException as NotesApiException
from hubspot.crm.objects.tasks.exceptions import ApiException as TasksApiException
from hubspot.crm.properties.exceptions import ApiException as PropertiesApiException

from leadsync import backoff
from leadsync.worker.crm.port import (
    MAX_BATCH,
    CrmAuthError,
    CrmError,
    CrmRateLimited,
    CrmRejected,
    CrmTemporaryError,
    InputError,
    WriteInput,
    WriteOutcome,
)

API_ERRORS = (
    ContactsApiException,
    PropertiesApiException,
    PreferencesApiException,
    NotesApiException,
    TasksApiException,
)
TRANSPORT_ERRORS = (urllib3.exceptions.HTTPError, OSError)


@dataclass(frozen=True)
class RetryPolicy:
    """How hard one flush tries before it gives the batch back."""

    attempts: int = 4  # tries per call for 5xx, timeouts, connection errors
    base: float = 0.5  # seconds; doubles per attempt, capped, with jitter
    cap: float = 8.0
    rate_limited: int = 3  # 429s absorbed (each pauses every worker) before the batch is deferred
    max_wait: float = 5.0  # longest a call waits for a rate-limit slot before the batch is deferred

    def delay(self, attempt: int) -> float:
        """Exponential backoff with equal jitter: half fixed, half random, so retries spread out."""
        return backoff.jittered(attempt, self.base, self.cap)


@dataclass
class CallStats:
    """What this process saw of HubSpot; the sync persists it for `leadsync status`."""

    calls: int = 0
    rate_limited: int = 0  # 429 answers
    retries: int = 0
    daily_limit: int | None = None
    daily_remaining: int | None = None
    window_max: int | None = None
    window_remaining: int | None = None
    last_429_at: str | None = None
    last_429_policy: str | None = None
    _reported_429: int = 0  # how many of the 429s were already handed to take_budget

    def snapshot(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}


def body_of(error: Any) -> dict[str, Any]:
    try:
        return json.loads(error.body or "{}")
    except (TypeError, ValueError):
        return {}


def headers_of(error_or_headers: Any) -> dict[str, str]:
    headers = getattr(error_or_headers, "headers", error_or_headers) or {}
    return {str(k).lower(): str(v) for k, v in headers.items()}


def classify(error: BaseException) -> CrmError:
    """Map a client exception to the failure class the sync acts on."""
    if isinstance(error, CrmError):
        return error
    if isinstance(error, API_ERRORS):
        status, body = error.status or 0, body_of(error)
        message = f"HubSpot {status}: {body.get('message') or error.reason}"
        if status == 429:
            headers = headers_of(error)
            retry_after = headers.get("retry-after")
            interval_ms = headers.get("x-hubspot-ratelimit-interval-milliseconds")
            wait = float(retry_after) if retry_after else float(interval_ms or 10_000) / 1000
            return CrmRateLimited(message, wait, body.get("policyName"))
        if status in (401, 403):
            return CrmAuthError(message, status)
        if status == 0 or status >= 500 or status in (408, 423):
            return CrmTemporaryError(message, status)
        return CrmRejected(message, body.get("errors") or [body], status)
    if isinstance(error, TRANSPORT_ERRORS):
        return CrmTemporaryError(f"HubSpot unreachable: {error.__class__.__name__}: {error}")
    raise error


def chunks(items: Sequence[WriteInput], size: int = MAX_BATCH) -> list[Sequence[WriteInput]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def created_outcome(response: dict[str, Any], trace_ids: list[str]) -> WriteOutcome:
    """Ids of created notes/tasks by trace id, and the inputs a 207 refused (HubSpot's JSON answer)."""
    outcome = WriteOutcome()
    results = response.get("results") or []
    errors = response.get("errors") or []
    for error in errors:
        code = ((error.get("errors") or [{}])[0] or {}).get("code") or error.get("category") or "ERROR"
        for trace_id in (error.get("context") or {}).get("objectWriteTraceId", []):
            outcome.errors[str(trace_id)] = InputError(str(code), str(error.get("message") or code))
    # Without the echo, order is all there is: trusted only when every input came back (no 207).
    in_order = not errors and len(results) == len(trace_ids)
    for index, record in enumerate(results):
        trace_id = record.get("objectWriteTraceId") or (trace_ids[index] if in_order else None)
        if trace_id:
            outcome.ids[str(trace_id)] = str(record["id"])
    return outcome


def read_json(raw: Any) -> dict[str, Any]:
    """A batch answer read as JSON: the client's models cost ~1 ms an object to build (a Configuration copy,
    dateutil for every timestamp), 80 ms a batch of 100, the largest CPU cost of a flush."""
    return json.loads(raw.data or b"{}")


def batch_outcome(
    response: dict[str, Any], by_email: dict[str, str] | None = None, by_id: dict[str, str] | None = None
) -> WriteOutcome:
    outcome = WriteOutcome()
    for record in response.get("results") or []:
        trace_id = record.get("objectWriteTraceId")
        if not trace_id:  # answers without the echo: match upserts by email, updates by record id
            email = ((record.get("properties") or {}).get("email") or "").lower()
            trace_id = (by_email or {}).get(email) or (by_id or {}).get(str(record.get("id")))
        if trace_id:
            outcome.ids[str(trace_id)] = str(record["id"])
    for error in response.get("errors") or []:
        details = error.get("errors") or []
        first = (details[0] or {}) if details else {}
        code = str(first.get("code") or error.get("category") or "ERROR")
        for trace_id in (error.get("context") or {}).get("objectWriteTraceId", []):
            outcome.errors[str(trace_id)] = InputError(code, str(error.get("message") or code))
    return outcome

"""The CRM port: what the sync, the timeline, the preferences and the erasure need from a CRM, and the
failure classes they act on (each also leadsync/errors.py's TemporaryError or PermanentError). Shaped like
worker/mail/transport.py's MailTransport: one protocol, adapters behind it. `HubSpotCrm`
(worker/crm/hubspot.py) talks to HubSpot through the official client; `StubCrm` (worker/crm/stub.py) keeps
records in memory, for unit tests that need no emulator.

Example:
    >>> crm: Crm = StubCrm()
    >>> crm.upsert_by_email([WriteInput("ann@example.org", {"firstname": "Ann"}, trace_id="17")]).ids
    {'17': '1'}
    >>> crm.budget().calls
    1
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from leadsync.errors import DeliveryError, PermanentError, TemporaryError

if TYPE_CHECKING:
    from leadsync.worker.crm.mapping import Mapping

MAX_BATCH = 100  # HubSpot's limit on inputs per batch call


class CrmError(DeliveryError):
    """Base of the failure classes below; `status` is HubSpot's HTTP status when there was one."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class CrmTemporaryError(CrmError, TemporaryError):
    """5xx, timeouts, connection errors (or the limiter's storage away): back off and try again."""


class CrmRateLimited(CrmError, TemporaryError):
    """429, or no rate-limit slot soon enough: wait `retry_after` seconds. `policy` is HubSpot's policyName."""

    def __init__(self, message: str, retry_after: float, policy: str | None = None) -> None:
        super().__init__(message, 429)
        self.retry_after = retry_after
        self.policy = policy


class CrmAuthError(CrmError, TemporaryError):
    """401/403: the token is wrong or lacks scopes. Retrying cannot help until a human acts; temporary all
    the same, since the contacts stay pending and sync once the token is fixed (service_state.py)."""


class CrmRejected(CrmError, PermanentError):
    """A 4xx for the whole batch; `errors` carries HubSpot's per-error details."""

    def __init__(self, message: str, errors: list[dict[str, Any]], status: int = 400) -> None:
        super().__init__(message, status)
        self.errors = errors

    @property
    def code(self) -> str:
        first = self.errors[0] if self.errors else {}
        return str(first.get("code") or first.get("category") or "VALIDATION_ERROR")


@dataclass(frozen=True)
class WriteInput:
    """One contact write: `key` is the email (upsert) or the HubSpot record id (update)."""

    key: str
    properties: dict[str, str]
    trace_id: str  # our contact id: HubSpot echoes it on results and per-input errors


@dataclass(frozen=True)
class ActivityInput:
    """One note or task to create on a contact's timeline (worker/crm/activities.py)."""

    properties: dict[str, str]
    contact_record_id: str  # the HubSpot contact it is associated with
    association_type: int  # HUBSPOT_DEFINED: 202 note_to_contact, 204 task_to_contact
    trace_id: str  # our activity row id: HubSpot echoes it on per-input errors (a 207)


@dataclass(frozen=True)
class InputError:
    code: str  # HubSpot's error code, e.g. INVALID_EMAIL, PROPERTY_DOESNT_EXIST, OBJECT_NOT_FOUND
    message: str


@dataclass
class WriteOutcome:
    ids: dict[str, str] = field(default_factory=dict)  # trace id -> HubSpot record id
    errors: dict[str, InputError] = field(default_factory=dict)  # trace id -> why HubSpot refused it

    def merge(self, other: WriteOutcome) -> None:
        self.ids.update(other.ids)
        self.errors.update(other.errors)
        for trace_id in other.ids:
            self.errors.pop(trace_id, None)


@dataclass(frozen=True)
class Budget:
    """What one process saw of the CRM's rate limits: the sync persists it for `leadsync status`."""

    calls: int = 0  # calls made so far (retries included)
    rate_limited: int = 0  # of which answered 429
    retries: int = 0
    rate_limit: int = 100  # our own limiter's calls per 10 s (HUBSPOT_RATE_LIMIT)
    daily_limit: int | None = None  # as HubSpot last reported (rate-limit headers)
    daily_remaining: int | None = None
    window_max: int | None = None
    window_remaining: int | None = None
    last_429_at: str | None = None
    last_429_policy: str | None = None


@runtime_checkable
class Crm(Protocol):
    """A CRM the worker writes contacts, timeline entries and consent to. Methods raise CrmError's classes."""

    fingerprint: str  # tells one token (account) from another, never shows it

    def upsert_by_email(self, inputs: Sequence[WriteInput]) -> WriteOutcome: ...

    def update_by_id(self, inputs: Sequence[WriteInput]) -> WriteOutcome: ...

    def owners_of(self, record_ids: Sequence[str]) -> dict[str, str | None]: ...

    def read_properties(self, record_ids: Sequence[str], names: Sequence[str]) -> dict[str, dict[str, str]]: ...

    def create_activities(self, object_type: str, inputs: Sequence[ActivityInput]) -> WriteOutcome: ...

    def find_activities(self, object_type: str, property_name: str, tokens: Sequence[str]) -> dict[str, str]: ...

    def submit_form(self, url: str, payload: dict[str, Any]) -> None: ...

    def set_subscription(
        self, email: str, subscription_id: str, subscribed: bool, legal_basis: str, explanation: str
    ) -> str: ...

    def gdpr_delete(self, email: str) -> None: ...

    def gdpr_delete_record(self, record_id: str) -> None: ...

    def bootstrap(self, mapping: Mapping) -> list[str]: ...

    def check(self) -> None: ...

    def budget(self) -> Budget: ...

    def take_budget(self) -> tuple[Budget, int]: ...

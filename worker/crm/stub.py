"""An in-memory CRM behind the `Crm` port, for unit tests (like dramatiq's StubBroker): records by id,
keyed by email, the calls it was asked for, and failures on demand. No network, no rate limiter.

It keeps HubSpot's contract where the sync depends on it: an upsert by email finds the record of that
address, an update of an id it does not hold is OBJECT_NOT_FOUND for that input (a 207), an address in
`refuse` is refused per input, and a batch holding a key in `reject_batches_with` is refused whole (a 400).

Example:
    >>> crm = StubCrm(refuse={"bad@example.org": "INVALID_EMAIL"})
    >>> outcome = crm.upsert_by_email(
    ...     [WriteInput("ann@example.org", {}, "1"), WriteInput("bad@example.org", {}, "2")]
    ... )
    >>> outcome.ids, outcome.errors["2"].code
    ({'1': '1'}, 'INVALID_EMAIL')
    >>> crm.fail_next(CrmTemporaryError("HubSpot 503", 503))
    >>> crm.check()  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    leadsync.worker.crm.port.CrmTemporaryError: HubSpot 503
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from leadsync.worker.crm.mapping import Mapping
from leadsync.worker.crm.port import (
    ActivityInput,
    Budget,
    CrmError,
    CrmRateLimited,
    CrmRejected,
    InputError,
    WriteInput,
    WriteOutcome,
)


@dataclass
class StubCrm:
    """Records in memory; `calls` lists (method, keys) in order, so a test asserts on what was asked."""

    refuse: dict[str, str] = field(default_factory=dict)  # email -> error code, refused per input
    reject_batches_with: set[str] = field(default_factory=set)  # a key that fails its whole batch (400)
    fingerprint: str = "stub"
    records: dict[str, dict[str, str]] = field(default_factory=dict)  # record id -> properties
    activities: dict[str, dict[str, dict[str, str]]] = field(default_factory=dict)  # "notes" -> id -> properties
    subscriptions: dict[tuple[str, str], bool] = field(default_factory=dict)  # (email, subscription) -> on
    forms: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    erased: list[str] = field(default_factory=list)  # emails and record ids, as deleted
    calls: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)
    rate_limit: int = 100
    _failures: list[CrmError] = field(default_factory=list)
    _rate_limited: int = 0
    _reported_429: int = 0
    _next_id: int = 0

    def fail_next(self, error: CrmError, times: int = 1) -> None:
        """The next `times` calls raise `error` (after being counted, as a refused call is one)."""
        self._failures.extend([error] * times)

    def _call(self, method: str, keys: Sequence[str] = ()) -> None:
        self.calls.append((method, tuple(keys)))
        if self._failures:
            error = self._failures.pop(0)
            if isinstance(error, CrmRateLimited):
                self._rate_limited += 1
            raise error
        if self.reject_batches_with & set(keys):
            bad = sorted(self.reject_batches_with & set(keys))
            raise CrmRejected(f"HubSpot 400: invalid input {', '.join(bad)}", [{"code": "VALIDATION_ERROR"}])

    def count(self, method: str) -> int:
        return sum(1 for name, _ in self.calls if name == method)

    def record_of(self, email: str) -> str | None:
        email = email.lower()
        return next((rid for rid, props in self.records.items() if props.get("email", "").lower() == email), None)

    def _new_id(self) -> str:
        self._next_id += 1
        return str(self._next_id)

    # ------------------------------------------------------------------ contacts

    def upsert_by_email(self, inputs: Sequence[WriteInput]) -> WriteOutcome:
        self._call("upsert_by_email", [item.key for item in inputs])
        outcome = WriteOutcome()
        for item in inputs:
            if item.key.lower() in self.refuse:
                code = self.refuse[item.key.lower()]
                outcome.errors[item.trace_id] = InputError(code, f"{code}: {item.key}")
                continue
            record_id = self.record_of(item.key) or self._new_id()
            self.records.setdefault(record_id, {}).update({**item.properties, "email": item.key.lower()})
            outcome.ids[item.trace_id] = record_id
        return outcome

    def update_by_id(self, inputs: Sequence[WriteInput]) -> WriteOutcome:
        self._call("update_by_id", [item.key for item in inputs])
        outcome = WriteOutcome()
        for item in inputs:
            if item.key not in self.records:
                outcome.errors[item.trace_id] = InputError("OBJECT_NOT_FOUND", f"no record {item.key}")
                continue
            self.records[item.key].update(item.properties)
            outcome.ids[item.trace_id] = item.key
        return outcome

    def owners_of(self, record_ids: Sequence[str]) -> dict[str, str | None]:
        self._call("owners_of", record_ids)
        return {rid: self.records[rid].get("hubspot_owner_id") or None for rid in record_ids if rid in self.records}

    def read_properties(self, record_ids: Sequence[str], names: Sequence[str]) -> dict[str, dict[str, str]]:
        self._call("read_properties", record_ids)
        return {
            rid: {name: self.records[rid][name] for name in names if self.records[rid].get(name) is not None}
            for rid in record_ids
            if rid in self.records
        }

    # ------------------------------------------------------------------ timeline, forms, consent

    def create_activities(self, object_type: str, inputs: Sequence[ActivityInput]) -> WriteOutcome:
        self._call(f"create_{object_type}", [item.trace_id for item in inputs])
        outcome = WriteOutcome()
        for item in inputs:
            record_id = self._new_id()
            self.activities.setdefault(object_type, {})[record_id] = dict(item.properties)
            outcome.ids[item.trace_id] = record_id
        return outcome

    def find_activities(self, object_type: str, property_name: str, tokens: Sequence[str]) -> dict[str, str]:
        self._call(f"find_{object_type}", tokens)
        found: dict[str, str] = {}
        for record_id, properties in self.activities.get(object_type, {}).items():
            for token in tokens:
                if token in properties.get(property_name, ""):
                    found.setdefault(token, record_id)
        return found

    def submit_form(self, url: str, payload: dict[str, Any]) -> None:
        self._call("submit_form", [url])
        self.forms.append((url, payload))
        # As HubSpot does: the contact the submission names gets the submission's time as its conversion.
        email = next((f["value"].lower() for f in payload.get("fields", []) if f.get("name") == "email"), None)
        record_id = self.record_of(email) if email else None
        if record_id is not None and payload.get("submittedAt"):
            at = datetime.fromtimestamp(int(payload["submittedAt"]) / 1000, UTC).isoformat(timespec="milliseconds")
            self.records[record_id]["recent_conversion_date"] = at.replace("+00:00", "Z")

    def set_subscription(
        self, email: str, subscription_id: str, subscribed: bool, legal_basis: str, explanation: str
    ) -> str:
        self._call("set_subscription", [email])
        if self.subscriptions.get((email.lower(), subscription_id), False) == subscribed:
            state = "already subscribed" if subscribed else "already unsubscribed"
            raise CrmRejected(f"HubSpot 400: {email} is {state}", [{"code": "VALIDATION_ERROR"}])
        self.subscriptions[(email.lower(), subscription_id)] = subscribed
        return "SUBSCRIBED" if subscribed else "NOT_SUBSCRIBED"

    # ------------------------------------------------------------------ erasure, setup, budget

    def gdpr_delete(self, email: str) -> None:
        self._call("gdpr_delete", [email])
        record_id = self.record_of(email)
        if record_id is not None:
            del self.records[record_id]
        self.erased.append(email.lower())

    def gdpr_delete_record(self, record_id: str) -> None:
        self._call("gdpr_delete_record", [record_id])
        if record_id not in self.records:
            raise CrmRejected(f"HubSpot 404: no record {record_id}", [{"code": "OBJECT_NOT_FOUND"}], 404)
        del self.records[record_id]
        self.erased.append(record_id)

    def bootstrap(self, mapping: Mapping) -> list[str]:
        self._call("bootstrap")
        return []  # every property "exists": the stub keeps whatever it is sent

    def check(self) -> None:
        self._call("check")

    def budget(self) -> Budget:
        return Budget(calls=len(self.calls), rate_limited=self._rate_limited, rate_limit=self.rate_limit)

    def take_budget(self) -> tuple[Budget, int]:
        new, self._reported_429 = self._rate_limited - self._reported_429, self._rate_limited
        return self.budget(), new

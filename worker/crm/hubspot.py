"""HubSpot behind a small interface, through the official `hubspot-api-client`.

Every call goes through one path (`_call`): take a slot from the shared rate limiter, pass an explicit
timeout (the client has none), fold the answer's rate-limit headers back into the limiter, and sort
failures into the classes the sync acts on. 5xx, timeouts and connection errors are retried here with
exponential backoff and jitter (batch upserts by email and updates by id are idempotent, so a timed-out
write that landed anyway is harmless to send again); a 429 pauses every worker and is retried after the
pause. One object per process holds the client's API objects (each attribute access in the client
builds a new one).

Example:
    >>> crm = HubSpotCrm(token="pat-...", base_url="https://api.hubapi.com", timeout=10, limiter=limiter)
    >>> outcome = crm.upsert_by_email([WriteInput("ann@example.org", {"firstname": "Ann"}, trace_id="17")])
    >>> outcome.ids
    {'17': '151'}
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import urllib3
from hubspot import HubSpot
from hubspot.communication_preferences import PublicUpdateSubscriptionStatusRequest
from hubspot.crm.contacts import (
    BatchReadInputSimplePublicObjectId,
    PublicGdprDeleteInput,
    SimplePublicObjectId,
)
from hubspot.crm.contacts.exceptions import ApiException as ContactsApiException
from hubspot.crm.objects.notes import (
    Filter,
    FilterGroup,
    PublicObjectSearchRequest,
)
from hubspot.crm.properties import OptionInput, PropertyCreate, PropertyGroupCreate

from leadsync.worker.crm.hubspot_wire import (
    CallStats,
    RetryPolicy,
    batch_outcome,
    chunks,
    classify,
    created_outcome,
    headers_of,
    read_json,
)
from leadsync.worker.crm.mapping import Mapping
from leadsync.worker.crm.port import (
    MAX_BATCH,
    ActivityInput,
    Budget,
    CrmError,
    CrmRateLimited,
    CrmRejected,
    CrmTemporaryError,
    WriteInput,
    WriteOutcome,
)
from leadsync.worker.crm.ratelimit import LIMITER_ERRORS, RateLimitBusy, RateLimiter, identity_for, memory_limiter

log = logging.getLogger(__name__)

CATEGORY = "HUBSPOT_DEFINED"  # the association types of notes and tasks to contacts (202, 204)


class HubSpotCrm:
    """The HubSpot contacts, properties and communication-preferences APIs for one process, behind the
    shared rate limiter."""

    def __init__(
        self,
        token: str,
        base_url: str,
        timeout: float,
        limiter: RateLimiter | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        client = HubSpot(access_token=token, host=base_url.rstrip("/"))
        self._batch = client.crm.contacts.batch_api
        self._basic = client.crm.contacts.basic_api
        self._properties = client.crm.properties.core_api
        self._groups = client.crm.properties.groups_api
        self._preferences = client.communication_preferences.status_api
        notes, tasks = client.crm.objects.notes, client.crm.objects.tasks
        self._activity_batch = {"notes": notes.batch_api, "tasks": tasks.batch_api}
        self._activity_search = {"notes": notes.search_api, "tasks": tasks.search_api}
        self._forms_http = urllib3.PoolManager()
        self._forms_auth = f"Bearer {token}"
        self.timeout = timeout
        self.limiter = limiter or memory_limiter(100, identity_for(token, base_url))
        self.retry = retry or RetryPolicy()
        self.fingerprint = identity_for(token, base_url)  # tells a changed token apart, never shows it
        self.stats = CallStats()
        self._stats_lock = threading.Lock()

    def __repr__(self) -> str:  # never show the token
        return f"HubSpotCrm(timeout={self.timeout}, limiter={self.limiter!r})"

    def budget(self) -> Budget:
        """What this process saw of HubSpot so far, and the limiter's rate."""
        with self._stats_lock:
            return self._budget()

    def take_budget(self) -> tuple[Budget, int]:
        """The budget, and the 429s seen since the last take (the sync adds them to the shared count)."""
        with self._stats_lock:
            new = self.stats.rate_limited - self.stats._reported_429
            self.stats._reported_429 = self.stats.rate_limited
            return self._budget(), new

    def _budget(self) -> Budget:
        return Budget(rate_limit=self.limiter.limit, **self.stats.snapshot())

    # ------------------------------------------------------------------ one path for every call

    def _call(self, method: Callable[..., Any], *args: Any, once: bool = False, **options: Any) -> Any:
        """Rate-limited, timed-out, retried call of a client `*_with_http_info` method; returns the data.

        `once`: a write that is not idempotent (a note, a task) is not sent again after a 5xx or a timeout,
        which may have landed; the caller looks for it first (a 429 never landed and is retried as usual).
        """
        failures = rate_limited = 0
        while True:
            try:
                self.limiter.acquire(self.retry.max_wait)
            except RateLimitBusy as busy:
                raise CrmRateLimited(str(busy), busy.wait) from busy
            except LIMITER_ERRORS as error:
                raise CrmTemporaryError(f"rate limiter unavailable: {error}") from error
            try:
                if options.get("_preload_content") is False:  # the raw response: its body is read by the caller
                    data = method(*args, _request_timeout=self.timeout, **options)
                    headers = data.headers
                else:
                    data, _status, headers = method(*args, _request_timeout=self.timeout, **options)
            except Exception as raw:
                error = classify(raw)
                self._observe(getattr(raw, "headers", None), error)
                if isinstance(error, CrmRateLimited):
                    rate_limited += 1
                    # HubSpot rarely sends Retry-After on the 10-second window; then a short pause is enough,
                    # because `observe` has already marked our window as full as HubSpot's.
                    pause = error.retry_after if "retry-after" in headers_of(raw) else 1.0
                    if error.policy == "DAILY":
                        pause = max(pause, 900.0)
                    self._pause(pause)
                    if error.policy == "DAILY" or rate_limited >= self.retry.rate_limited:
                        raise CrmRateLimited(str(error), pause, error.policy) from raw
                    continue
                if isinstance(error, CrmTemporaryError):
                    failures += 1
                    if once or failures >= self.retry.attempts:
                        raise error from raw
                    delay = self.retry.delay(failures)
                    log.warning("HubSpot call failed (%s); retry %d in %.1fs", error, failures, delay)
                    with self._stats_lock:
                        self.stats.retries += 1
                    time.sleep(delay)
                    continue
                raise error from raw
            self._observe(headers, None)
            return data

    def _pause(self, seconds: float) -> None:
        try:
            self.limiter.pause(seconds)
        except LIMITER_ERRORS as error:  # the 429 itself is what matters; the caller defers
            log.warning("could not record the HubSpot pause: %s", error)

    def _observe(self, headers: Any, error: CrmError | None) -> None:
        found = headers_of(headers)
        with self._stats_lock:
            self.stats.calls += 1
            for name, attribute in (
                ("x-hubspot-ratelimit-daily", "daily_limit"),
                ("x-hubspot-ratelimit-daily-remaining", "daily_remaining"),
                ("x-hubspot-ratelimit-max", "window_max"),
                ("x-hubspot-ratelimit-remaining", "window_remaining"),
            ):
                if found.get(name, "").isdigit():
                    setattr(self.stats, attribute, int(found[name]))
            if isinstance(error, CrmRateLimited):
                self.stats.rate_limited += 1
                self.stats.last_429_at = datetime.now(UTC).isoformat(timespec="seconds")
                self.stats.last_429_policy = error.policy or "TEN_SECONDLY_ROLLING"
        if found and not (isinstance(error, CrmRateLimited) and "retry-after" in found):
            # (with Retry-After, HubSpot said exactly how long to wait: the pause covers it)
            try:
                self.limiter.observe(found)
            except LIMITER_ERRORS as failure:
                log.warning("could not fold HubSpot's rate headers in: %s", failure)

    # ------------------------------------------------------------------ contacts

    def upsert_by_email(self, inputs: Sequence[WriteInput]) -> WriteOutcome:
        """Batch upserts keyed by email, at most 100 inputs a call (more are split).

        Every input carries an objectWriteTraceId, so HubSpot answers one bad input with a 207
        listing it instead of rejecting the whole batch.
        """
        outcome = WriteOutcome()
        for chunk in chunks(inputs):
            batch = {
                "inputs": [
                    {
                        "id": item.key,
                        "idProperty": "email",
                        "objectWriteTraceId": item.trace_id,
                        "properties": item.properties,
                    }
                    for item in chunk
                ]
            }
            response = read_json(self._call(self._batch.upsert_with_http_info, batch, _preload_content=False))
            outcome.merge(batch_outcome(response, by_email={item.key.lower(): item.trace_id for item in chunk}))
        return outcome

    def update_by_id(self, inputs: Sequence[WriteInput]) -> WriteOutcome:
        """Batch updates by HubSpot record id (at most 100 a call): a changed email never makes a duplicate."""
        outcome = WriteOutcome()
        for chunk in chunks(inputs):
            batch = {
                "inputs": [
                    {"id": item.key, "objectWriteTraceId": item.trace_id, "properties": item.properties}
                    for item in chunk
                ]
            }
            response = read_json(self._call(self._batch.update_with_http_info, batch, _preload_content=False))
            # HubSpot does not always echo the trace id on updates: the record id we sent names the input too
            # (without it, an updated contact would stay pending and be written again on every flush).
            outcome.merge(batch_outcome(response, by_id={item.key: item.trace_id for item in chunk}))
        return outcome

    def owners_of(self, record_ids: Sequence[str]) -> dict[str, str | None]:
        """The `hubspot_owner_id` of contact records (one batch read a 100); records gone are left out."""
        read = self.read_properties(record_ids, ["hubspot_owner_id"])
        return {record_id: values.get("hubspot_owner_id") or None for record_id, values in read.items()}

    def read_properties(self, record_ids: Sequence[str], names: Sequence[str]) -> dict[str, dict[str, str]]:
        """Some properties of contact records, by record id (one batch read a 100); records gone are left out."""
        found: dict[str, dict[str, str]] = {}
        for start in range(0, len(record_ids), MAX_BATCH):
            request = BatchReadInputSimplePublicObjectId(
                properties=list(names),
                inputs=[SimplePublicObjectId(id=record_id) for record_id in record_ids[start : start + MAX_BATCH]],
                properties_with_history=[],
            )
            response = self._call(self._batch.read_with_http_info, request)
            for record in response.results or []:
                found[str(record.id)] = {k: v for k, v in (record.properties or {}).items() if v is not None}
        return found

    def gdpr_delete(self, email: str) -> None:
        """Erase a person from HubSpot for good (GDPR delete by email); HubSpot also blocks the address.

        An address HubSpot does not hold is fine: the delete by email answers 204 either way.
        """
        self._call(self._basic.purge_with_http_info, PublicGdprDeleteInput(object_id=email, id_property="email"))

    def gdpr_delete_record(self, record_id: str) -> None:
        """Erase one contact record for good (GDPR delete by record id): the record we synced, even if its
        email was changed in HubSpot since. An unknown id is a CrmRejected with status 404."""
        self._call(self._basic.purge_with_http_info, PublicGdprDeleteInput(object_id=record_id))

    def set_subscription(
        self, email: str, subscription_id: str, subscribed: bool, legal_basis: str, explanation: str
    ) -> str:
        """Subscribe or unsubscribe one address to one subscription type (communication preferences v3).

        Returns the status HubSpot reports (SUBSCRIBED / NOT_SUBSCRIBED). HubSpot answers a change to the
        state the address is already in with a 400, raised as CrmRejected like any other refusal.
        """
        request = PublicUpdateSubscriptionStatusRequest(
            email_address=email,
            subscription_id=subscription_id,
            legal_basis=legal_basis,
            legal_basis_explanation=explanation,
        )
        api = self._preferences
        method = api.subscribe_with_http_info if subscribed else api.unsubscribe_with_http_info
        return str(self._call(method, request).status)

    # ------------------------------------------------------------------ timeline: notes and tasks, Forms API

    def create_activities(self, object_type: str, inputs: Sequence[ActivityInput]) -> WriteOutcome:
        """Batch create notes or tasks (`object_type` "notes" / "tasks"), each associated with its contact.

        At most 100 a call. Each input carries an objectWriteTraceId, so one refused input is a 207 naming it.
        Sent once: a 5xx or a timeout raises CrmTemporaryError, and the caller searches before writing again.
        The body goes as plain JSON and the answer is read as JSON: the client's model objects cost ~1 ms
        each to build and parse (a Configuration copy and dateutil per object), 0.2 s a batch of 100.
        """
        outcome = WriteOutcome()
        api = self._activity_batch[object_type]
        for start in range(0, len(inputs), MAX_BATCH):
            chunk = inputs[start : start + MAX_BATCH]
            body = {
                "inputs": [
                    {
                        "properties": item.properties,
                        "objectWriteTraceId": item.trace_id,
                        "associations": [
                            {
                                "to": {"id": item.contact_record_id},
                                "types": [
                                    {"associationCategory": CATEGORY, "associationTypeId": item.association_type}
                                ],
                            }
                        ],
                    }
                    for item in chunk
                ]
            }
            raw = self._call(api.create_with_http_info, body, once=True, _preload_content=False)
            outcome.merge(created_outcome(json.loads(raw.data or b"{}"), [item.trace_id for item in chunk]))
        return outcome

    def find_activities(self, object_type: str, property_name: str, tokens: Sequence[str]) -> dict[str, str]:
        """Notes or tasks whose `property_name` contains one of `tokens` (a word each): token -> record id.

        Five tokens a search call (HubSpot allows five filter groups, ORed). Only for writes whose outcome
        we never heard, so the calls are rare.
        """
        found: dict[str, str] = {}
        api = self._activity_search[object_type]
        for start in range(0, len(tokens), 5):
            chunk = list(tokens[start : start + 5])
            request = PublicObjectSearchRequest(
                filter_groups=[
                    FilterGroup(filters=[Filter(property_name=property_name, operator="CONTAINS_TOKEN", value=token)])
                    for token in chunk
                ],
                properties=[property_name],
                limit=100,
            )
            for record in self._call(api.do_search_with_http_info, request).results or []:
                text = (record.properties or {}).get(property_name) or ""
                for token in chunk:
                    if token in text:
                        found.setdefault(token, str(record.id))
        return found

    def submit_form(self, url: str, payload: dict[str, Any]) -> None:
        """POST one submission to HubSpot's Forms API (v3 integration submit, authenticated) at `url`."""
        body = json.dumps(payload).encode()
        self._call(self._post_form, url, body, once=True)

    def _post_form(self, url: str, body: bytes, _request_timeout: float) -> tuple[Any, int, Any]:
        """The client has no Forms API: urllib3, raising the client's ApiException so `classify` sorts it."""
        response = self._forms_http.request(
            "POST",
            url,
            body=body,
            headers={"Content-Type": "application/json", "Authorization": self._forms_auth},
            timeout=_request_timeout,
            retries=False,
        )
        if response.status >= 300:
            error = ContactsApiException(status=response.status, reason=response.reason)
            error.body, error.headers = response.data.decode(errors="replace"), dict(response.headers)
            raise error
        return response.data, response.status, response.headers

    # ------------------------------------------------------------------ properties

    def bootstrap(self, mapping: Mapping) -> list[str]:
        """Create the property group and the synced custom properties that are missing (idempotent).

        Returns what was created; a property another worker created meanwhile (409) counts as there.
        """
        created: list[str] = []
        groups = {g.name for g in self._call(self._groups.get_all_with_http_info, "contacts").results}
        if mapping.group_name not in groups:
            group = PropertyGroupCreate(name=mapping.group_name, label=mapping.group_label)
            if self._create(self._groups.create_with_http_info, group):
                created.append(f"group {mapping.group_name}")
        existing = {p.name for p in self._call(self._properties.get_all_with_http_info, "contacts").results}
        for spec in mapping.custom:
            if spec.hubspot in existing:
                continue
            options = [OptionInput(label=o, value=o, display_order=i, hidden=False) for i, o in enumerate(spec.options)]
            definition = PropertyCreate(
                name=spec.hubspot,
                label=spec.label or spec.hubspot,
                type=spec.type,
                field_type=spec.field_type,
                group_name=mapping.group_name,
                options=options or None,
            )
            if self._create(self._properties.create_with_http_info, definition):
                created.append(f"property {spec.hubspot}")
        return created

    def _create(self, method: Callable[..., Any], body: Any) -> bool:
        try:
            self._call(method, "contacts", body)
        except CrmRejected as error:
            if error.status == 409:  # created meanwhile by another worker: that is what we wanted
                return False
            raise
        return True

    def check(self) -> None:
        """One cheap authenticated call; raises CrmError when HubSpot refuses it."""
        self._call(self._groups.get_all_with_http_info, "contacts")

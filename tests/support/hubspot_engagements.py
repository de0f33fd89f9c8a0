"""The HubSpot emulator's timeline half: notes, tasks, owners and the Forms API (v3 integration submit).

Shapes follow HubSpot's public specs (CRM v3 objects notes/tasks: batch create with associations and
objectWriteTraceId, 201 or 207 with per-input errors; search with filterGroups; CRM v3 owners; Forms API v3
`/submissions/v3/integration/secure/submit/{portalId}/{formGuid}` answering 200 `inlineMessage` or 400/404
with `errors[].errorType`; a landed submission finds or creates the contact and sets its conversion properties,
`recent_conversion_date` from `submittedAt`). Mounted by `HubSpotEmulator` (tests/support/hubspot_emulator.py);
tests read:

    hub.engagements.notes_for("ann@example.org")        # the notes associated with her record
    hub.engagements.count_tokens("notes", "lsref" + submission_id)   # notes created per submission
    hub.engagements.form_submissions                    # (portal id, form GUID, body) as received
    hub.hold_after_next(1, 30.0, "/objects/notes/batch/create")   # write, then hold the answer 30 s

A note whose association names a contact the portal does not have is refused per input (a 207 when every
input carries an objectWriteTraceId, else a 400 for the batch), as HubSpot does; so is a note without
`hs_timestamp` or a task without `hs_task_subject`.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.support.hubspot_emulator import HubSpotEmulator, _Req

ASSOCIATIONS = {"notes": 202, "tasks": 204}  # HUBSPOT_DEFINED <object>_to_contact
REQUIRED = {"notes": ("hs_timestamp",), "tasks": ("hs_timestamp", "hs_task_subject")}
OWNERS = (("101", "Dana", "Reyes"), ("102", "Sam", "Okafor"), ("103", "Lee", "Park"))
FORM_GUID = re.compile(r"^[0-9a-fA-F-]{8,64}$")


class Engagements:
    """Notes, tasks, owners and form submissions of one emulated portal (guarded by the emulator's lock)."""

    def __init__(self, hub: HubSpotEmulator) -> None:
        self.hub = hub
        self.records: dict[str, dict[str, dict[str, Any]]] = {"notes": {}, "tasks": {}}
        self.forms: set[str] = set()  # form GUIDs that exist in the portal
        self.form_submissions: list[tuple[str, str, dict[str, Any]]] = []
        self._next_id = 60_001

    def reset(self) -> None:
        for records in self.records.values():
            records.clear()
        self.form_submissions.clear()

    def add_form(self, guid: str | None = None) -> str:
        guid = guid or str(uuid.uuid4())
        with self.hub.lock:
            self.forms.add(guid)
        return guid

    # ------------------------------------------------------------------ for tests

    def notes_for(self, email: str, object_type: str = "notes") -> list[dict[str, Any]]:
        with self.hub.lock:
            contact = self.hub.contact_by_email(email)
            if contact is None:
                return []
            return [
                r
                for r in self.records[object_type].values()
                if any(a["toObjectId"] == contact["id"] for a in r["associations"])
            ]

    def count_tokens(self, object_type: str, token: str) -> int:
        """How many notes (or tasks) HubSpot holds whose body carries `token`."""
        body = "hs_note_body" if object_type == "notes" else "hs_task_body"
        with self.hub.lock:
            return sum(token in (r["properties"].get(body) or "") for r in self.records[object_type].values())

    # ------------------------------------------------------------------ routes

    def routes(self) -> list[tuple[str, str, Any]]:
        table: list[tuple[str, str, Any]] = []
        for object_type in ("notes", "tasks"):
            base = rf"/crm/v3/objects/{object_type}"
            table += [
                ("POST", rf"{base}/?", lambda req, t=object_type: self._create(t, req)),
                ("POST", rf"{base}/batch/create", lambda req, t=object_type: self._batch_create(t, req)),
                ("POST", rf"{base}/search", lambda req, t=object_type: self._search(t, req)),
                ("GET", rf"{base}/(?P<record_id>\d+)", lambda req, t=object_type: self._get(t, req)),
            ]
        table += [
            ("GET", r"/crm/v3/owners/?", self._owners),
            (
                "POST",
                r"/submissions/v3/integration/secure/submit/(?P<portal>[^/]+)/(?P<guid>[^/]+)",
                self._submit_form,
            ),
        ]
        return table

    def _error(self, status: int, message: str, category: str, **kwargs: Any) -> Exception:
        from tests.support.hubspot_emulator import HubSpotError

        return HubSpotError(status, message, category, **kwargs)

    def _batch_create(self, object_type: str, req: _Req) -> tuple[int, Any]:
        from tests.support.hubspot_emulator import _iso, _trace_id

        inputs = self.hub._inputs(req.body)
        started = _iso(time.time())
        traced = bool(inputs) and all(_trace_id(item) for item in inputs)
        good: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []
        failures: list[tuple[dict[str, Any], Any]] = []
        for item in inputs:
            try:
                good.append((item, self._check(object_type, item)))
            except Exception as err:  # HubSpotError
                failures.append((item, err))
        if failures and not traced:
            raise failures[0][1]
        results = []
        for item, associations in good:
            out = self._view(self._store(object_type, item, associations))
            if _trace_id(item):
                out["objectWriteTraceId"] = _trace_id(item)
            results.append(out)
        body: dict[str, Any] = {"status": "COMPLETE", "results": results, "startedAt": started}
        body["completedAt"] = _iso(time.time())
        if not failures:
            return 201, body
        body["numErrors"] = len(failures)
        body["errors"] = [err.batch_item(_trace_id(item)) for item, err in failures]
        return 207, body

    def _create(self, object_type: str, req: _Req) -> tuple[int, Any]:
        """The single create (`POST /crm/v3/objects/notes`), associations in the body: 201 and the record."""
        item = req.json_object()
        return 201, self._view(self._store(object_type, item, self._check(object_type, item)))

    def _store(self, object_type: str, item: dict[str, Any], associations: list[dict[str, Any]]) -> dict[str, Any]:
        from tests.support.hubspot_emulator import _iso

        now = time.time()
        record_id = str(self._next_id)
        self._next_id += 1
        properties = {k: str(v) for k, v in (item.get("properties") or {}).items()}
        properties.update(hs_object_id=record_id, hs_createdate=_iso(now), hs_lastmodifieddate=_iso(now))
        record = {
            "id": record_id,
            "properties": properties,
            "associations": associations,
            "createdAt": _iso(now),
            "updatedAt": _iso(now),
            "archived": False,
            "_indexed_at": now + self.hub.search_lag_seconds,
        }
        self.records[object_type][record_id] = record
        return record

    def _check(self, object_type: str, item: dict[str, Any]) -> list[dict[str, Any]]:
        properties = item.get("properties") or {}
        missing = [name for name in REQUIRED[object_type] if not properties.get(name)]
        if missing:
            message = f"Property values were not valid: required properties missing: {', '.join(missing)}"
            raise self._error(400, message, "VALIDATION_ERROR", errors=[{"message": message, "code": "REQUIRED"}])
        owner = properties.get("hubspot_owner_id")
        if owner and owner not in {o[0] for o in OWNERS}:
            message = f"{owner} is not a valid owner id"
            raise self._error(
                400, message, "VALIDATION_ERROR", errors=[{"message": message, "code": "INVALID_OWNER_ID"}]
            )
        associations = []
        for association in item.get("associations") or []:
            to = str((association.get("to") or {}).get("id") or "")
            for spec in association.get("types") or []:
                category, type_id = spec.get("associationCategory"), spec.get("associationTypeId")
                if category != "HUBSPOT_DEFINED" or type_id != ASSOCIATIONS[object_type]:
                    message = f"association type {category}/{type_id} is not valid from {object_type} to contacts"
                    raise self._error(400, message, "VALIDATION_ERROR")
                if to not in self.hub.contacts:
                    message = f"Could not find CONTACT with id {to} to associate with"
                    raise self._error(400, message, "VALIDATION_ERROR", sub_category="INVALID_ASSOCIATION")
                associations.append({"toObjectId": to, "associationTypeId": type_id})
        return associations

    @staticmethod
    def _view(record: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in record.items() if not k.startswith("_") and k != "associations"}

    def _get(self, object_type: str, req: _Req) -> tuple[int, Any]:
        record = self.records[object_type].get(req.params["record_id"])
        if record is None:
            raise self._error(
                404, f"Object not found. objectId are usually numeric. id={req.params['record_id']}", "OBJECT_NOT_FOUND"
            )
        return 200, self._view(record)

    def _search(self, object_type: str, req: _Req) -> tuple[int, Any]:
        """filterGroups ORed, filters ANDed; EQ and CONTAINS_TOKEN on any property; lags like HubSpot's index."""
        from tests.support.hubspot_emulator import MAX_FILTER_GROUPS

        body = req.json_object()
        groups = body.get("filterGroups") or []
        if len(groups) > MAX_FILTER_GROUPS:
            raise self._error(400, f"Too many filter groups: the limit is {MAX_FILTER_GROUPS}.", "VALIDATION_ERROR")
        now = time.time()

        def matches(record: dict[str, Any], flt: dict[str, Any]) -> bool:
            actual = (record["properties"].get(flt.get("propertyName") or "") or "").lower()
            wanted = str(flt.get("value") or "").lower()
            if flt.get("operator") == "EQ":
                return actual == wanted
            if flt.get("operator") == "CONTAINS_TOKEN":
                return wanted in re.split(r"[^0-9a-z_]+", actual)
            raise self._error(
                400, f"operator {flt.get('operator')} is not emulated for {object_type}", "VALIDATION_ERROR"
            )

        hits = [
            r
            for r in sorted(self.records[object_type].values(), key=lambda r: int(r["id"]))
            if r["_indexed_at"] <= now
            and (not groups or any(all(matches(r, f) for f in g.get("filters") or []) for g in groups))
        ]
        limit = int(body.get("limit") or 10)
        names = body.get("properties") or []
        results = []
        for record in hits[:limit]:
            view = self._view(record)
            view["properties"] = {
                k: v for k, v in record["properties"].items() if not names or k in names or k == "hs_object_id"
            }
            results.append(view)
        return 200, {"total": len(hits), "results": results}

    def _owners(self, req: _Req) -> tuple[int, Any]:
        from tests.support.hubspot_emulator import STANDARD_TIMESTAMP

        results = [
            {
                "id": owner_id,
                "email": f"{first.lower()}@clinic.example",
                "firstName": first,
                "lastName": last,
                "userId": int(owner_id) * 10,
                "createdAt": STANDARD_TIMESTAMP,
                "updatedAt": STANDARD_TIMESTAMP,
                "archived": False,
                "type": "PERSON",
            }
            for owner_id, first, last in OWNERS
        ]
        return 200, {"results": results}

    def _submit_form(self, req: _Req) -> tuple[int, Any]:
        """Forms API v3 integration submit: 200 with the form's inline message, or HubSpot's errorType list."""
        from tests.support.hubspot_emulator import PORTAL_ID

        portal, guid = req.params["portal"], req.params["guid"]
        if portal != str(PORTAL_ID) or guid not in self.forms:
            raise self._error(404, f"The form '{guid}' does not exist or is deleted", None)
        body = req.json_object()
        problems: list[dict[str, str]] = []
        fields = body.get("fields")
        if not isinstance(fields, list) or not fields:
            problems.append({"message": "Required field 'fields' is missing", "errorType": "REQUIRED_FIELD"})
        else:
            for item in fields:
                if not isinstance(item, dict) or not item.get("name") or item.get("objectTypeId") != "0-1":
                    problems.append({"message": f"Error in 'fields': {item!r}", "errorType": "INVALID_METADATA"})
        context = body.get("context") or {}
        hutk = context.get("hutk")
        if hutk is not None and not re.fullmatch(r"[0-9a-f]{32}", str(hutk)):
            problems.append({"message": "Error in 'context.hutk'. Invalid hutk", "errorType": "INVALID_HUTK"})
        page = context.get("pageUri")
        if page is not None and not str(page).startswith(("http://", "https://")):
            problems.append({"message": "Error in 'context.pageUri'. Invalid URI", "errorType": "INVALID_PAGE_URI"})
        consent = ((body.get("legalConsentOptions") or {}).get("consent")) or None
        if consent is not None and consent.get("consentToProcess") and not consent.get("text"):
            problems.append({"message": "Missing consent text", "errorType": "MISSING_PROCESSING_CONSENT_TEXT"})
        if problems:
            raise self._error(400, "The request is not valid", None, errors=problems)
        self.form_submissions.append((portal, guid, body))
        self._convert(fields, body.get("submittedAt"))
        return 200, {"inlineMessage": "Thanks for submitting the form."}

    def _convert(self, fields: list[dict[str, Any]], submitted_at: Any) -> None:
        """What a landed submission does to the contact: found or created by email, with HubSpot's conversion
        properties (`recent_conversion_date` is the submission's `submittedAt`, else the time it arrived)."""
        from tests.support.hubspot_emulator import _iso

        email = next((str(f.get("value", "")).strip().lower() for f in fields if f.get("name") == "email"), "")
        if not email:
            return
        try:
            stamp = _iso(int(submitted_at) / 1000) if submitted_at is not None else _iso(time.time())
        except (TypeError, ValueError):
            stamp = _iso(time.time())
        with self.hub.lock:
            record = self.hub._lookup("email", email)
            if record is None:  # HubSpot creates the contact a submission names
                self.hub.add_contact({"email": email})
                record = self.hub._lookup("email", email)
                assert record is not None
            props = record["properties"]
            values = {
                "recent_conversion_date": stamp,
                "num_conversion_events": str(int(props.get("num_conversion_events") or 0) + 1),
            }
            if not props.get("first_conversion_date"):
                values["first_conversion_date"] = stamp
            if self.hub._apply(record, values, time.time()):
                self.hub._reindex(record["id"])

"""A local, in-memory emulator of HubSpot's CRM v3 HTTP API: contacts, contact properties, GDPR delete,
the communication preferences v3 API (subscription definitions and per-address statuses), and the timeline
half in tests/support/hubspot_engagements.py (notes, tasks, owners, Forms API submissions).

Why it exists: the worker talks to HubSpot only through the official ``hubspot-api-client``, and
HubSpot itself is out of reach from tests, CI and benchmarks. This module speaks HubSpot's wire format
(status codes, camelCase JSON, multi-status batches, rate-limit headers and 429 bodies) closely enough
that the real client deserializes every answer, so integration tests exercise the real code path:

    with HubSpotEmulator() as hub:
        client = HubSpot(access_token=hub.token, host=hub.url)

Tests can inspect and steer the state (``contacts``, ``calls()``, ``fail_next()``, ``delay_next()``...).
``created`` and ``writes`` count, per email, the records created and every write that landed, so a test
asserts "once" on what HubSpot did rather than on the final set of contacts (which merges by email).
``strict=Strict(...)`` (or ``emulator.strict = ...`` between calls) turns on HubSpot's less convenient
behaviours one by one; ``Strict.everything()`` turns them all on:

    with HubSpotEmulator(strict=Strict(no_partial_upserts=True, retry_after=2.0)) as hub: ...
Standalone, in the foreground (benchmarks, docker experiments):

    python -m tests.support.hubspot_emulator --port 8099 --token X --rate-limit 100
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import fnmatch
import json
import logging
import re
import socket
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from http import HTTPStatus
from typing import Any, Literal

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.support.hubspot_engagements import OWNERS, Engagements

log = logging.getLogger(__name__)

# HubSpot's published limits for the CRM v3 endpoints emulated here.
MAX_BATCH_INPUTS = 100
MAX_PAGE_LIMIT = 100
MAX_SEARCH_LIMIT = 200
MAX_SEARCH_RESULTS = 10_000
MAX_FILTER_GROUPS = 5
MAX_FILTERS_PER_GROUP = 6
MAX_FILTERS_TOTAL = 18

PORTAL_ID = 4_000_001  # a fake account id, echoed where HubSpot echoes the portal
APP_ID = 3_000_001  # a fake private-app id, for the 429 `groupName`
STANDARD_TIMESTAMP = "2019-08-06T02:41:08.000Z"  # createdAt of HubSpot-defined properties

# Properties HubSpot returns when the caller names none, and the ones it always adds when it does.
DEFAULT_READ_PROPERTIES = ("createdate", "email", "firstname", "hs_object_id", "lastmodifieddate", "lastname")
ALWAYS_RETURNED = ("createdate", "hs_object_id", "lastmodifieddate")
# Properties a search `query` (free text) looks into.
SEARCH_TEXT_PROPERTIES = ("firstname", "lastname", "email", "phone", "company")

LIFECYCLE_STAGES = (
    ("subscriber", "Subscriber"),
    ("lead", "Lead"),
    ("marketingqualifiedlead", "Marketing Qualified Lead"),
    ("salesqualifiedlead", "Sales Qualified Lead"),
    ("opportunity", "Opportunity"),
    ("customer", "Customer"),
    ("evangelist", "Evangelist"),
    ("other", "Other"),
)
LEAD_STATUSES = (
    ("NEW", "New"),
    ("OPEN", "Open"),
    ("IN_PROGRESS", "In Progress"),
    ("OPEN_DEAL", "Open Deal"),
    ("UNQUALIFIED", "Unqualified"),
    ("ATTEMPTED_TO_CONTACT", "Attempted to Contact"),
    ("CONNECTED", "Connected"),
    ("BAD_TIMING", "Bad Timing"),
)

# Which fieldType each property type accepts (HubSpot rejects other combinations).
FIELD_TYPES: dict[str, frozenset[str]] = {
    "string": frozenset({"text", "textarea", "file", "phonenumber", "html"}),
    "number": frozenset({"number", "calculation_equation"}),
    "enumeration": frozenset({"select", "radio", "checkbox", "booleancheckbox"}),
    "bool": frozenset({"booleancheckbox"}),
    "date": frozenset({"date"}),
    "datetime": frozenset({"date"}),
}
SEARCH_OPERATORS = frozenset(
    {
        "EQ",
        "NEQ",
        "LT",
        "LTE",
        "GT",
        "GTE",
        "BETWEEN",
        "IN",
        "NOT_IN",
        "HAS_PROPERTY",
        "NOT_HAS_PROPERTY",
        "CONTAINS_TOKEN",
        "NOT_CONTAINS_TOKEN",
    }
)

AUTH_MESSAGE = (
    "Authentication credentials not found. This API supports OAuth 2.0 authentication and you can find "
    "more details at https://developers.hubspot.com/docs/methods/auth/oauth-overview"
)
NOT_FOUND_MESSAGE = "Could not get some CONTACT objects, they may be deleted or not exist. Check that ids are valid."

# Communication preferences v3: the legal bases HubSpot accepts, and the subscription types a fresh portal has.
LEGAL_BASES = frozenset(
    {
        "LEGITIMATE_INTEREST_PQL",
        "LEGITIMATE_INTEREST_CLIENT",
        "PERFORMANCE_OF_CONTRACT",
        "CONSENT_WITH_NOTICE",
        "NON_GDPR",
        "PROCESS_AND_STORE",
        "LEGITIMATE_INTEREST_OTHER",
    }
)
DEFAULT_SUBSCRIPTIONS = (
    ("4910001", "Marketing Information", "Marketing offers and updates."),
    ("4910002", "One to One", "One to one emails."),
)

_OBJECT = r"(?:contacts|contact|0-1)"
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
_EMAIL_RE = re.compile(
    r"^[a-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[a-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?\.)+[a-z]{2,}$"
)


def _iso(ts: float) -> str:
    """HubSpot's timestamp format: UTC, millisecond precision, trailing Z."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _parse_instant(text: str) -> datetime | None:
    """Read a date/datetime value the way HubSpot accepts them: epoch milliseconds or ISO-8601."""
    text = text.strip()
    if re.fullmatch(r"-?\d+", text):
        try:
            return datetime.fromtimestamp(int(text) / 1000, UTC)
        except (OverflowError, OSError, ValueError):
            return None
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _as_text(value: Any) -> str:
    """Property values travel as strings; HubSpot also accepts JSON numbers and booleans."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | Decimal):
        return str(value)
    if isinstance(value, str):
        return value
    return json.dumps(value)


def _trace_id(item: Any) -> str | None:
    value = item.get("objectWriteTraceId") if isinstance(item, dict) else None
    return str(value) if value not in (None, "") else None


class HubSpotError(Exception):
    """An error answer in HubSpot's JSON shape; handlers raise it, the dispatcher renders it."""

    def __init__(
        self,
        status: int,
        message: str,
        category: str | None,
        *,
        errors: list[dict[str, Any]] | None = None,
        context: dict[str, list[str]] | None = None,
        sub_category: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.category = category
        self.errors = errors
        self.context = context
        self.sub_category = sub_category
        self.extra = extra or {}

    def render(self, correlation_id: str) -> dict[str, Any]:
        body: dict[str, Any] = {"status": "error", "message": self.message, "correlationId": correlation_id}
        body.update(self.extra)
        if self.category:
            body["category"] = self.category
        if self.sub_category:
            body["subCategory"] = self.sub_category
        if self.context:
            body["context"] = self.context
        if self.errors:
            body["errors"] = self.errors
        return body

    def batch_item(self, trace_id: str | None) -> dict[str, Any]:
        """One entry of a 207 answer's `errors` (the client's StandardError: every field present)."""
        context = dict(self.context or {})
        if trace_id:
            context["objectWriteTraceId"] = [trace_id]
        item: dict[str, Any] = {
            "status": "error",
            "category": self.category or "VALIDATION_ERROR",
            "message": self.message,
            "context": context,
            "errors": self.errors or [],
            "links": {},
        }
        if self.sub_category:
            item["subCategory"] = self.sub_category
        return item


def _bad_request(message: str, code: str = "INVALID_INPUT") -> HubSpotError:
    return HubSpotError(400, message, "VALIDATION_ERROR", errors=[{"message": message, "code": code}])


@dataclass(frozen=True)
class Problem:
    """One invalid property value; HubSpot reports them both as a JSON list in `message` and in `errors`."""

    code: str
    message: str
    name: str

    def detail(self) -> dict[str, Any]:
        return {"message": self.message, "code": self.code, "context": {"propertyName": [self.name]}}

    def legacy(self) -> dict[str, Any]:
        return {
            "isValid": False,
            "message": self.message,
            "error": self.code,
            "name": self.name,
            "localizedErrorMessage": self.message,
            "portalId": PORTAL_ID,
        }


def _validation_error(problems: list[Problem]) -> HubSpotError:
    message = "Property values were not valid: " + json.dumps([p.legacy() for p in problems], separators=(",", ":"))
    return HubSpotError(400, message, "VALIDATION_ERROR", errors=[p.detail() for p in problems])


@dataclass(frozen=True)
class Call:
    """One request as the emulator saw it (faults, 401s and 429s included)."""

    method: str
    path: str
    status: int
    time: float  # wall clock when the request arrived
    inputs: int | None  # len(body["inputs"]) for batch endpoints
    query: str = ""
    body: Any = None
    duration: float = 0.0


@dataclass
class _Req:
    """What a handler needs from the HTTP request."""

    params: dict[str, str]
    query: list[tuple[str, str]]
    body: Any
    base_url: str

    def q(self, name: str) -> str | None:
        return next((v for k, v in self.query if k == name), None)

    def q_list(self, name: str) -> list[str] | None:
        """A list parameter, sent either repeated (the python client) or comma separated."""
        values = [v for k, v in self.query if k == name]
        if not values:
            return None
        return [part.strip() for v in values for part in v.split(",") if part.strip()]

    def q_bool(self, name: str) -> bool:
        return (self.q(name) or "").lower() == "true"

    def json_object(self) -> dict[str, Any]:
        if not isinstance(self.body, dict):
            raise _bad_request("Invalid input JSON: expected a JSON object body")
        return self.body


@dataclass
class _Write:
    """A validated write, planned against the current state and committed only if the batch may proceed."""

    record_id: str | None  # None: create
    values: dict[str, str]
    echo: list[str]
    trace_id: str | None


@dataclass
class _BatchClaims:
    """Emails and records already taken by earlier inputs of the same batch."""

    emails: dict[str, str] = field(default_factory=dict)
    records: set[str] = field(default_factory=set)


Handler = Callable[[_Req], tuple[int, Any]]


@dataclass
class Strict:
    """HubSpot behaviours a client must survive, off by default so the plain emulator stays convenient.

    Each one is documented HubSpot behaviour or seen in the field (see the field comments).
    """

    # Email upserts: one bad input refuses the whole batch with a 400 even when every input has an
    # objectWriteTraceId (HubSpot's 207 partial success is not promised for upserts by a unique property).
    no_partial_upserts: bool = False
    # Batch update results without `objectWriteTraceId`: the client must match results by record id.
    no_update_trace_echo: bool = False
    # Seconds sent as `Retry-After` on every 429 (None: no header, HubSpot's usual answer on the 10 s window).
    retry_after: float | None = None
    # False: no X-HubSpot-RateLimit-Daily* headers (HubSpot omits them for OAuth apps).
    daily_headers: bool = True
    # Body of 5xx answers: HubSpot's JSON, an HTML error page from its edge, or nothing at all.
    error_body: Literal["json", "html", "empty"] = "json"

    @classmethod
    def everything(cls) -> Strict:
        return cls(True, True, 1.0, False, "html")


def _prop(
    name: str,
    label: str,
    type_: str,
    field_type: str,
    *,
    group: str = "contactinformation",
    description: str = "",
    options: tuple[tuple[str, str], ...] = (),
    read_only_value: bool = False,
    read_only_definition: bool = True,
    form_field: bool = True,
) -> dict[str, Any]:
    """A HubSpot-defined property definition, as GET /crm/v3/properties/contacts/{name} returns it."""
    return {
        "updatedAt": STANDARD_TIMESTAMP,
        "createdAt": STANDARD_TIMESTAMP,
        "name": name,
        "label": label,
        "type": type_,
        "fieldType": field_type,
        "description": description,
        "groupName": group,
        "options": [
            {"label": lab, "value": val, "displayOrder": i, "hidden": False, "description": ""}
            for i, (val, lab) in enumerate(options)
        ],
        "displayOrder": -1,
        "calculated": False,
        "externalOptions": False,
        "hasUniqueValue": False,
        "hidden": False,
        "hubspotDefined": True,
        "modificationMetadata": {
            "archivable": False,
            "readOnlyDefinition": read_only_definition,
            "readOnlyValue": read_only_value,
        },
        "formField": form_field,
        "archived": False,
    }


def standard_properties() -> dict[str, dict[str, Any]]:
    """The HubSpot-defined contact properties a fresh portal has (the subset leadsync can touch)."""
    props = [
        _prop("email", "Email", "string", "text", description="A contact's email address"),
        _prop("firstname", "First Name", "string", "text", description="A contact's first name"),
        _prop("lastname", "Last Name", "string", "text", description="A contact's last name"),
        _prop("phone", "Phone Number", "string", "phonenumber", description="A contact's primary phone number"),
        _prop(
            "company",
            "Company Name",
            "string",
            "text",
            description="Name of the contact's company. This can be set independently from the name "
            "property on the contact's associated company.",
        ),
        _prop("website", "Website URL", "string", "text", description="Associated company website."),
        _prop("jobtitle", "Job Title", "string", "text", description="A contact's job title"),
        _prop("city", "City", "string", "text", description="A contact's city of residence"),
        _prop("state", "State/Region", "string", "text", description="The contact's state of residence."),
        _prop("zip", "Postal Code", "string", "text", description="The contact's zip code."),
        _prop("country", "Country/Region", "string", "text", description="The contact's country/region."),
        _prop(
            "message",
            "Message",
            "string",
            "textarea",
            description="A default property to be used for any message or comments a contact may want "
            "to leave on a form.",
        ),
        _prop(
            "lifecyclestage",
            "Lifecycle Stage",
            "enumeration",
            "radio",
            options=LIFECYCLE_STAGES,
            read_only_definition=False,
            description="The qualification of contacts to sales readiness. It can be set through imports, "
            "forms, workflows, and manually on a per contact basis.",
        ),
        _prop(
            "hs_lead_status",
            "Lead Status",
            "enumeration",
            "radio",
            options=LEAD_STATUSES,
            group="sales_properties",
            read_only_definition=False,
            description="The contact's sales, prospecting or outreach status",
        ),
        _prop(
            "hs_object_id",
            "Record ID",
            "number",
            "number",
            read_only_value=True,
            form_field=False,
            description="The unique ID for this record. This value is automatically set by HubSpot and "
            "may not be modified.",
        ),
        _prop(
            "createdate",
            "Create Date",
            "datetime",
            "date",
            form_field=False,
            description="The date that a contact entered the system",
        ),
        # Set by HubSpot when a form submission lands (leadsync reads them to learn whether a Forms API post
        # whose answer it never got was written); read-only through the CRM API, as in HubSpot.
        _prop(
            "recent_conversion_date",
            "Recent Conversion Date",
            "datetime",
            "date",
            read_only_value=True,
            form_field=False,
            description="The date this contact last submitted a form",
        ),
        _prop(
            "first_conversion_date",
            "First Conversion Date",
            "datetime",
            "date",
            read_only_value=True,
            form_field=False,
            description="The date this contact first submitted a form",
        ),
        _prop(
            "num_conversion_events",
            "Number of Form Submissions",
            "number",
            "number",
            read_only_value=True,
            form_field=False,
            description="The number of forms this contact has submitted",
        ),
        _prop(
            "lastmodifieddate",
            "Last Modified Date",
            "datetime",
            "date",
            read_only_value=True,
            form_field=False,
            description="Most recent timestamp of any property update for this contact.",
        ),
    ]
    return {p["name"]: p for p in props}


def standard_groups() -> dict[str, dict[str, Any]]:
    return {
        "contactinformation": {
            "name": "contactinformation",
            "label": "Contact information",
            "displayOrder": -1,
            "archived": False,
        },
        "sales_properties": {
            "name": "sales_properties",
            "label": "Sales properties",
            "displayOrder": -1,
            "archived": False,
        },
    }


class HubSpotEmulator:
    """HubSpot CRM v3 contacts/properties/GDPR and communication preferences v3, in memory, served over
    real HTTP on 127.0.0.1.

    All state sits behind one re-entrant lock (``lock``): the server thread mutates it while the test
    thread reads it. Iterate ``contacts`` only while holding ``lock``; the accessor methods lock for you.
    """

    def __init__(
        self,
        token: str = "test-token",
        rate_limit: int = 100,
        window_seconds: float = 10.0,
        daily_limit: int = 250_000,
        port: int = 0,
        *,
        host: str = "127.0.0.1",
        search_lag_seconds: float = 0.0,
        record_bodies: bool = True,
        max_calls: int = 100_000,
        strict: Strict | None = None,
    ) -> None:
        self.token = token
        self.strict = strict or Strict()
        self.created: Counter[str] = Counter()  # email -> records created for it (through the API)
        self.writes: Counter[str] = Counter()  # email -> writes that landed on its record (creates included)
        self.rate_limit = rate_limit
        self.window_seconds = window_seconds
        self.daily_limit = daily_limit
        # HubSpot's search index trails writes by a few seconds; set > 0 to make tests feel that.
        self.search_lag_seconds = search_lag_seconds
        self.record_bodies = record_bodies
        self.host = host
        self._requested_port = port
        self._port: int | None = None
        self._lock = threading.RLock()
        self.contacts: dict[str, dict[str, Any]] = {}
        self.properties: dict[str, dict[str, Any]] = {}
        self.groups: dict[str, dict[str, Any]] = {}
        self.erased_emails: set[str] = set()  # GDPR-deleted (blocklisted) addresses
        # Communication preferences: subscription types by id; (email, subscription id) -> the explicit
        # status (absent: never set, reported NOT_SUBSCRIBED); addresses opted out of all email.
        self.subscription_definitions: dict[str, dict[str, Any]] = {}
        self.subscription_statuses: dict[tuple[str, str], dict[str, Any]] = {}
        self.opted_out_of_all: set[str] = set()
        self._next_subscription_id = 4910101
        self._next_id = 1001
        self._by_email: dict[str, str] = {}
        self._index: dict[str, dict[str, Any]] = {}  # what search sees
        self._pending: list[tuple[float, str, dict[str, Any] | None]] = []
        self._calls: deque[Call] = deque(maxlen=max_calls)
        self._windows: dict[str, deque[float]] = {}
        self._daily_used: dict[str, int] = {}
        self._day = datetime.now(UTC).date()
        self._fail_count = 0
        self._fail_status = 503
        self._fail_path: str | None = None  # fail_next hits only paths containing this (None: every path)
        self._fail_until = 0.0
        self._fail_for_status = 503
        self._delays: deque[float] = deque()
        self._holds: list[list[Any]] = []  # [remaining, seconds, path_contains]: answer late, after the write
        self.engagements = Engagements(self)
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None
        self._routes = self._build_routes()
        methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
        self.app = Starlette(routes=[Route("/{path:path}", self._endpoint, methods=methods)])
        self._seed()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> HubSpotEmulator:
        """Serve in a background thread; returns once the port accepts connections."""
        if self._thread is not None:
            return self
        self._server = self._make_server()
        self._socket = self._bind()
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, name="hubspot-emulator", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("HubSpot emulator failed to start")
            time.sleep(0.005)
        return self

    def stop(self) -> None:
        if self._server is None or self._thread is None:
            return
        self._server.should_exit = True
        self._thread.join(timeout=5)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(timeout=5)
        if self._socket is not None:
            self._socket.close()
        self._server = self._thread = self._socket = None

    def serve_forever(self) -> None:
        """Serve in the foreground until SIGINT/SIGTERM (the CLI entry point)."""
        server = self._make_server()
        self._socket = self._bind()
        print(f"HubSpot emulator listening on {self.url}", flush=True)
        try:
            server.run(sockets=[self._socket])
        finally:
            self._socket.close()
            self._socket = None

    def __enter__(self) -> HubSpotEmulator:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._port is None:
            raise RuntimeError("HubSpot emulator is not started")
        return f"http://{self.host}:{self._port}"

    @property
    def port(self) -> int | None:
        return self._port

    @property
    def lock(self) -> threading.RLock:
        return self._lock

    def _make_server(self) -> uvicorn.Server:
        config = uvicorn.Config(
            self.app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            loop="asyncio",
            ws="none",
            timeout_graceful_shutdown=2,
        )
        return uvicorn.Server(config)

    def _bind(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self._port or self._requested_port))
        sock.listen(2048)  # connections queue from now on, even before uvicorn accepts them
        self._port = sock.getsockname()[1]
        return sock

    # ------------------------------------------------------------------ state for tests

    def contact_by_email(self, email: str) -> dict[str, Any] | None:
        """A copy of the live (non-archived) contact holding this email, matched case-insensitively."""
        with self._lock:
            record_id = self._by_email.get(email.strip().lower())
            return copy.deepcopy(self.contacts[record_id]) if record_id else None

    def add_contact(self, properties: dict[str, str]) -> dict[str, Any]:
        """Seed a contact without HTTP (no call recorded, no rate limit); validated like an API create."""
        with self._lock:
            write = self._plan_create({"properties": properties}, _BatchClaims())
            record_id = self._commit(write, upsert=False, count=False)["id"]
            return copy.deepcopy(self.contacts[record_id])

    def add_subscription(self, name: str, description: str = "") -> str:
        """Create a subscription type (as a marketer does in HubSpot's settings); returns its id."""
        with self._lock:
            subscription_id = str(self._next_subscription_id)
            self._next_subscription_id += 1
            self.subscription_definitions[subscription_id] = self._definition(subscription_id, name, description)
            return subscription_id

    def subscription_status(self, email: str, subscription_id: str) -> str | None:
        """SUBSCRIBED / NOT_SUBSCRIBED as explicitly set for this address and type, None when never set."""
        with self._lock:
            if email.strip().lower() in self.opted_out_of_all:
                return "NOT_SUBSCRIBED"
            state = self.subscription_statuses.get((email.strip().lower(), subscription_id))
            return state["status"] if state else None

    def opt_out_of_all(self, email: str) -> None:
        """The address opted out of all email (the footer's "unsubscribe from all"): the API cannot undo it."""
        with self._lock:
            self.opted_out_of_all.add(email.strip().lower())

    def calls(self, path_contains: str | None = None) -> list[Call]:
        with self._lock:
            selected = [c for c in self._calls if path_contains is None or path_contains in c.path]
        return sorted(selected, key=lambda c: c.time)  # logged on completion; report in arrival order

    def count(self, path_contains: str | None = None, status: int | None = None) -> int:
        with self._lock:
            return sum(
                1
                for c in self._calls
                if (path_contains is None or path_contains in c.path) and (status is None or c.status == status)
            )

    def reset(self) -> None:
        """Back to a fresh portal: no contacts, calls, faults or rate usage; standard properties only."""
        with self._lock:
            self.contacts.clear()
            self._by_email.clear()
            self._index.clear()
            self._pending.clear()
            self.erased_emails.clear()
            self.subscription_statuses.clear()
            self.opted_out_of_all.clear()
            self._calls.clear()
            self._windows.clear()
            self._daily_used.clear()
            self.created.clear()
            self.writes.clear()
            self._fail_count = 0
            self._fail_until = 0.0
            self._delays.clear()
            self._holds.clear()
            self.engagements.reset()
            self._seed()

    def fail_next(self, n: int, status: int = 503, path_contains: str | None = None) -> None:
        """The next n requests (to paths containing `path_contains`, if given) answer `status` with a
        HubSpot-shaped body, before auth or any state change."""
        with self._lock:
            self._fail_count, self._fail_status, self._fail_path = n, status, path_contains

    def fail_for(self, seconds: float, status: int = 503) -> None:
        with self._lock:
            self._fail_until, self._fail_for_status = time.monotonic() + seconds, status

    def delay_next(self, n: int, seconds: float) -> None:
        """Hold the next n requests before handling them (they still run: a timed-out write may land)."""
        with self._lock:
            self._delays.extend([seconds] * n)

    def hold_after_next(self, n: int, seconds: float, path_contains: str) -> None:
        """The next n requests to paths containing `path_contains` are handled at once (the write lands) and
        answered `seconds` later: the window in which a client is killed after HubSpot wrote."""
        with self._lock:
            self._holds.append([n, seconds, path_contains])

    def _take_hold(self, path: str) -> float:
        for hold in self._holds:
            if hold[0] > 0 and hold[2] in path:
                hold[0] -= 1
                return float(hold[1])
        return 0.0

    def delays_left(self) -> int:
        """Requests `delay_next` will still hold (0: every held request has arrived and is being held or done)."""
        with self._lock:
            return len(self._delays)

    def set_token(self, token: str) -> None:
        with self._lock:
            self.token = token

    def _seed(self) -> None:
        self.properties.clear()
        self.properties.update(standard_properties())
        self.properties["hubspot_owner_id"] = _prop(
            "hubspot_owner_id",
            "Contact owner",
            "enumeration",
            "select",
            group="sales_properties",
            options=tuple((owner_id, f"{first} {last}") for owner_id, first, last in OWNERS),
            read_only_definition=False,
        )
        self.groups.clear()
        self.groups.update(standard_groups())
        self.subscription_definitions.clear()
        for subscription_id, name, description in DEFAULT_SUBSCRIPTIONS:
            definition = self._definition(subscription_id, name, description)
            self.subscription_definitions[subscription_id] = {**definition, "isDefault": True}

    # ------------------------------------------------------------------ HTTP plumbing

    async def _endpoint(self, request: Request) -> Response:
        arrived, started = time.time(), time.monotonic()
        raw = await request.body()
        path: str = request.scope["path"]
        query = list(request.query_params.multi_items())
        with self._lock:
            fault = self._take_fault(path)
            delay = self._delays.popleft() if fault is None and self._delays else 0.0
        if delay > 0:
            await asyncio.sleep(delay)
        base_url = f"{request.url.scheme}://{request.url.netloc}"
        with self._lock:
            body, body_error = self._parse_body(raw)
            if fault is not None:
                status, payload, headers = self._answer_error(self._fault_error(fault))
            else:
                status, payload, headers = self._process(
                    request.method,
                    path,
                    query,
                    request.headers.get("authorization", ""),
                    body,
                    body_error,
                    base_url,
                )
            hold = self._take_hold(path) if fault is None else 0.0
            inputs = len(body["inputs"]) if isinstance(body, dict) and isinstance(body.get("inputs"), list) else None
            self._calls.append(
                Call(
                    method=request.method,
                    path=path,
                    status=status,
                    time=arrived,
                    inputs=inputs if "/batch/" in path else None,
                    query=request.url.query,
                    body=body if self.record_bodies else None,
                    duration=time.monotonic() - started,
                )
            )
        if hold > 0:
            await asyncio.sleep(hold)
        if payload is None or (status >= 500 and self.strict.error_body == "empty"):
            return Response(status_code=status, headers=headers)
        if status >= 500 and self.strict.error_body == "html":
            page = f"<html><head><title>{status}</title></head><body><h1>{status} Server Error</h1></body></html>"
            return Response(page, status_code=status, headers=headers, media_type="text/html")
        content = json.dumps(payload, separators=(",", ":"))
        return Response(content, status_code=status, headers=headers, media_type="application/json;charset=utf-8")

    @staticmethod
    def _parse_body(raw: bytes) -> tuple[Any, HubSpotError | None]:
        if not raw.strip():
            return None, None
        try:
            return json.loads(raw), None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            line, col = getattr(exc, "lineno", 1), getattr(exc, "colno", 1)
            return None, _bad_request(f"Invalid input JSON on line {line}, column {col}: {exc}", "INVALID_JSON")

    def _process(
        self,
        method: str,
        path: str,
        query: list[tuple[str, str]],
        authorization: str,
        body: Any,
        body_error: HubSpotError | None,
        base_url: str,
    ) -> tuple[int, Any, dict[str, str]]:
        token = authorization[7:].strip() if authorization[:7].lower() == "bearer " else None
        if token != self.token:
            return self._answer_error(HubSpotError(401, AUTH_MESSAGE, "INVALID_AUTHENTICATION"))
        limited = self._admit(token)
        if limited is not None:
            return self._answer_error(limited)
        try:
            handler, params = self._route(method, path)
            if body_error is not None:
                raise body_error
            status, payload = handler(_Req(params=params, query=query, body=body, base_url=base_url))
        except HubSpotError as err:
            return self._answer_error(err)
        except Exception:  # a bug in the emulator: answer 500 like a broken upstream, and say so in the log
            log.exception("HubSpot emulator failed on %s %s", method, path)
            return self._answer_error(HubSpotError(500, "Internal error in the HubSpot emulator", "INTERNAL_ERROR"))
        return status, payload, self._headers(str(uuid.uuid4()))

    def _answer_error(self, err: HubSpotError) -> tuple[int, Any, dict[str, str]]:
        correlation_id = str(uuid.uuid4())
        headers = self._headers(correlation_id)
        if err.status == 429 and self.strict.retry_after is not None:
            headers["Retry-After"] = f"{self.strict.retry_after:g}"
        return err.status, err.render(correlation_id), headers

    def _headers(self, correlation_id: str) -> dict[str, str]:
        """Rate-limit headers for the account's bucket, on every answer like HubSpot's edge."""
        window = self._windows.get(self.token)
        used = 0
        if window is not None:
            self._prune(window, time.monotonic())
            used = len(window)
        daily = {
            "X-HubSpot-RateLimit-Daily": str(self.daily_limit),
            "X-HubSpot-RateLimit-Daily-Remaining": str(max(0, self.daily_limit - self._daily_used.get(self.token, 0))),
        }
        return {
            **(daily if self.strict.daily_headers else {}),
            "X-HubSpot-RateLimit-Interval-Milliseconds": str(int(self.window_seconds * 1000)),
            "X-HubSpot-RateLimit-Max": str(self.rate_limit),
            "X-HubSpot-RateLimit-Remaining": str(max(0, self.rate_limit - used)),
            "X-HubSpot-Correlation-Id": correlation_id,
        }

    def _route(self, method: str, path: str) -> tuple[Handler, dict[str, str]]:
        allowed = False
        for route_method, pattern, handler in self._routes:
            match = pattern.fullmatch(path)
            if match is None:
                continue
            if route_method == method:
                return handler, match.groupdict()
            allowed = True
        if allowed:
            raise HubSpotError(405, f"HTTP method {method} is not supported by {path}", "VALIDATION_ERROR")
        raise HubSpotError(
            404, f"No route for {method} {path} (not emulated, or not a HubSpot endpoint)", "OBJECT_NOT_FOUND"
        )

    def _build_routes(self) -> list[tuple[str, re.Pattern[str], Handler]]:
        objects = rf"/crm/v3/objects/{_OBJECT}"
        props = rf"/crm/v3/properties/{_OBJECT}"
        table: list[tuple[str, str, Handler]] = [
            ("POST", rf"{objects}/batch/upsert", self._batch_upsert),
            ("POST", rf"{objects}/batch/create", self._batch_create),
            ("POST", rf"{objects}/batch/update", self._batch_update),
            ("POST", rf"{objects}/batch/read", self._batch_read),
            ("POST", rf"{objects}/batch/archive", self._batch_archive),
            ("POST", rf"{objects}/search", self._search),
            ("POST", rf"{objects}/gdpr-delete", self._gdpr_delete),
            ("GET", objects, self._list_contacts),
            ("POST", objects, self._create_contact),
            ("GET", rf"{objects}/(?P<record_id>[^/]+)", self._get_contact),
            ("PATCH", rf"{objects}/(?P<record_id>[^/]+)", self._update_contact),
            ("DELETE", rf"{objects}/(?P<record_id>[^/]+)", self._archive_contact),
            ("GET", rf"{props}/groups", self._list_groups),
            ("POST", rf"{props}/groups", self._create_group),
            ("GET", rf"{props}/groups/(?P<name>[^/]+)", self._get_group),
            ("PATCH", rf"{props}/groups/(?P<name>[^/]+)", self._update_group),
            ("DELETE", rf"{props}/groups/(?P<name>[^/]+)", self._archive_group),
            ("POST", rf"{props}/batch/create", self._batch_create_properties),
            ("POST", rf"{props}/batch/read", self._batch_read_properties),
            ("POST", rf"{props}/batch/archive", self._batch_archive_properties),
            ("GET", props, self._list_properties),
            ("POST", props, self._create_property),
            ("GET", rf"{props}/(?P<name>[^/]+)", self._get_property),
            ("PATCH", rf"{props}/(?P<name>[^/]+)", self._update_property),
            ("DELETE", rf"{props}/(?P<name>[^/]+)", self._archive_property),
            ("GET", r"/communication-preferences/v3/definitions", self._list_subscriptions),
            ("GET", r"/communication-preferences/v3/status/email/(?P<email>[^/]+)", self._email_statuses),
            ("POST", r"/communication-preferences/v3/subscribe", self._subscribe),
            ("POST", r"/communication-preferences/v3/unsubscribe", self._unsubscribe),
            *self.engagements.routes(),
        ]
        return [(m, re.compile(p), h) for m, p, h in table]

    # ------------------------------------------------------------------ faults and rate limits

    def _take_fault(self, path: str) -> int | None:
        if self._fail_count > 0 and (self._fail_path is None or self._fail_path in path):
            self._fail_count -= 1
            return self._fail_status
        if time.monotonic() < self._fail_until:
            return self._fail_for_status
        return None

    def _fault_error(self, status: int) -> HubSpotError:
        if status == 429:
            return self._rate_error("TEN_SECONDLY_ROLLING")
        if status == 401:
            return HubSpotError(401, AUTH_MESSAGE, "INVALID_AUTHENTICATION")
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = "Error"
        category = re.sub(r"\W+", "_", phrase).upper()
        return HubSpotError(status, f"{phrase} (injected by the HubSpot emulator)", category)

    def _rate_error(self, policy: str) -> HubSpotError:
        label = "ten_secondly_rolling" if policy == "TEN_SECONDLY_ROLLING" else policy.lower()
        return HubSpotError(
            429,
            f"You have reached your {label} limit.",
            None,
            extra={
                "errorType": "RATE_LIMIT",
                "policyName": policy,
                "groupName": f"private-app:{APP_ID}",
                "requestId": str(uuid.uuid4()),
            },
        )

    def _prune(self, window: deque[float], now: float) -> None:
        cutoff = now - self.window_seconds
        while window and window[0] <= cutoff:
            window.popleft()

    def _admit(self, token: str) -> HubSpotError | None:
        """Rolling window plus daily quota; a refused request consumes neither and changes nothing."""
        now = time.monotonic()
        today = datetime.now(UTC).date()
        if today != self._day:
            self._day = today
            self._daily_used.clear()
        window = self._windows.setdefault(token, deque())
        self._prune(window, now)
        if self._daily_used.get(token, 0) >= self.daily_limit:
            return self._rate_error("DAILY")
        if len(window) >= self.rate_limit:
            return self._rate_error("TEN_SECONDLY_ROLLING")
        window.append(now)
        self._daily_used[token] = self._daily_used.get(token, 0) + 1
        return None

    # ------------------------------------------------------------------ property values

    def _active_property(self, name: str) -> dict[str, Any] | None:
        defn = self.properties.get(name)
        return defn if defn is not None and not defn.get("archived") else None

    def _coerce_value(self, defn: dict[str, Any], raw: Any) -> tuple[str, Problem | None]:
        """Validate and normalize one value the way HubSpot stores it ("" clears the property)."""
        name, kind = defn["name"], defn["type"]
        text = _as_text(raw)
        if text == "":
            return "", None
        if name == "email":
            email = text.strip().lower()
            if not _EMAIL_RE.fullmatch(email):
                return text, Problem("INVALID_EMAIL", f"Email address {text} is invalid", name)
            return email, None
        if kind == "number":
            try:
                number = Decimal(text.strip())
            except InvalidOperation:
                number = None
            if number is None or not number.is_finite():
                return text, Problem("INVALID_INTEGER", f"{text} was not a valid number.", name)
            return text.strip(), None
        if kind == "bool":
            if text.strip().lower() not in ("true", "false"):
                return text, Problem("INVALID_BOOLEAN", f"{text} was not a valid boolean (true or false).", name)
            return text.strip().lower(), None
        if kind == "enumeration":
            allowed = [o["value"] for o in defn.get("options", [])]
            chosen = text.split(";") if defn.get("fieldType") == "checkbox" else [text]
            bad = [c for c in chosen if c not in allowed]
            if bad:
                message = f"{bad[0]} was not one of the allowed options: [{', '.join(allowed)}]"
                return text, Problem("INVALID_OPTION", message, name)
            return text, None
        if kind in ("date", "datetime"):
            instant = _parse_instant(text)
            if instant is None:
                return text, Problem("INVALID_DATE", f"{text} is not a valid {kind} value.", name)
            if kind == "date":
                if instant.time() != datetime.min.time():
                    return text, Problem("INVALID_DATE", f"{text} is not at midnight UTC, as a date must be.", name)
                return instant.date().isoformat(), None
            return _iso(instant.timestamp()), None
        return text, None

    def _coerce_properties(self, raw: Any) -> tuple[dict[str, str], list[Problem]]:
        if raw is None:
            return {}, []
        if not isinstance(raw, dict):
            raise _bad_request("Invalid input JSON: `properties` must be an object")
        values: dict[str, str] = {}
        problems: list[Problem] = []
        for name, value in raw.items():
            defn = self._active_property(name)
            if defn is None:
                problems.append(Problem("PROPERTY_DOESNT_EXIST", f'Property "{name}" does not exist', name))
            elif defn["modificationMetadata"]["readOnlyValue"]:
                problems.append(
                    Problem("READ_ONLY_VALUE", f'"{name}" is a read only property; its value cannot be set.', name)
                )
            else:
                values[name], problem = self._coerce_value(defn, value)
                if problem is not None:
                    problems.append(problem)
        return values, problems

    def _stage_rank(self, value: str) -> int:
        defn = self.properties["lifecyclestage"]
        order = [o["value"] for o in sorted(defn["options"], key=lambda o: o.get("displayOrder", 0))]
        return order.index(value) if value in order else -1

    # ------------------------------------------------------------------ records

    def _lookup(self, id_property: str, key: str, *, archived: bool = False) -> dict[str, Any] | None:
        """Find a record by id or by a unique property, as batch/update, upsert and idProperty reads do."""
        if id_property in ("hs_object_id", "id"):
            record = self.contacts.get(key)
            return record if record is not None and record["archived"] == archived else None
        defn = self._active_property(id_property)
        if defn is None:
            raise HubSpotError(
                400,
                f'Property "{id_property}" does not exist',
                "VALIDATION_ERROR",
                errors=[
                    Problem("PROPERTY_DOESNT_EXIST", f'Property "{id_property}" does not exist', id_property).detail()
                ],
            )
        if id_property == "email" and not archived:
            record_id = self._by_email.get(key.strip().lower())
            return self.contacts[record_id] if record_id else None
        if id_property != "email" and not defn.get("hasUniqueValue"):
            raise _bad_request(f"Unable to perform update/upsert by non-unique 0-1 property {id_property}")
        wanted = key.strip().lower() if id_property == "email" else key
        return next(
            (
                r
                for r in self.contacts.values()
                if r["archived"] == archived and r["properties"].get(id_property) == wanted
            ),
            None,
        )

    def _new_record(self, now: float) -> dict[str, Any]:
        record_id = str(self._next_id)
        self._next_id += 1
        stamp = _iso(now)
        record = {
            "id": record_id,
            "properties": {"hs_object_id": record_id, "createdate": stamp, "lastmodifieddate": stamp},
            "createdAt": stamp,
            "updatedAt": stamp,
            "archived": False,
        }
        self.contacts[record_id] = record
        return record

    def _apply(self, record: dict[str, Any], values: dict[str, str], now: float) -> bool:
        """Write values; a lifecycle stage never moves backwards (HubSpot ignores it unless cleared first)."""
        props = record["properties"]
        changed = False
        for name, value in values.items():
            current = props.get(name)
            if name == "lifecyclestage" and value and current and self._stage_rank(value) < self._stage_rank(current):
                continue
            if value == "":
                if name in props:
                    del props[name]
                    changed = True
            elif current != value:
                props[name] = value
                changed = True
            if name == "email" and current != props.get("email"):
                if current and self._by_email.get(current) == record["id"]:
                    del self._by_email[current]
                if props.get("email"):
                    self._by_email[props["email"]] = record["id"]
        if changed:
            record["updatedAt"] = props["lastmodifieddate"] = _iso(now)
        return changed

    def _archive(self, record: dict[str, Any]) -> None:
        record["archived"] = True
        record["archivedAt"] = _iso(time.time())
        email = record["properties"].get("email")
        if email and self._by_email.get(email) == record["id"]:
            del self._by_email[email]
        self._reindex(record["id"])

    def _reindex(self, record_id: str) -> None:
        """Feed the search index, now or after `search_lag_seconds` (HubSpot's search is eventually consistent)."""
        record = self.contacts.get(record_id)
        snapshot = None
        if record is not None and not record["archived"]:
            snapshot = {**record, "properties": dict(record["properties"])}
        if self.search_lag_seconds <= 0:
            self._pending = [p for p in self._pending if p[1] != record_id]
            self._set_indexed(record_id, snapshot)
        else:
            self._pending.append((time.monotonic() + self.search_lag_seconds, record_id, snapshot))

    def _set_indexed(self, record_id: str, snapshot: dict[str, Any] | None) -> None:
        if snapshot is None:
            self._index.pop(record_id, None)
        else:
            self._index[record_id] = snapshot

    def _flush_index(self) -> None:
        now = time.monotonic()
        due = sorted((p for p in self._pending if p[0] <= now), key=lambda p: p[0])
        self._pending = [p for p in self._pending if p[0] > now]
        for _, record_id, snapshot in due:
            self._set_indexed(record_id, snapshot)

    def _read_view(self, record: dict[str, Any], names: list[str] | None) -> dict[str, Any]:
        """A record as reads return it: the default properties, or the requested ones plus the fixed three."""
        if names is None:
            wanted: list[str] = list(DEFAULT_READ_PROPERTIES)
        else:
            wanted = list(dict.fromkeys([*ALWAYS_RETURNED, *names]))
        props = record["properties"]
        out = {name: props.get(name) for name in wanted if self._active_property(name) is not None}
        return self._envelope(record, out)

    def _write_view(self, record: dict[str, Any], names: list[str]) -> dict[str, Any]:
        """A record as writes echo it: the written properties (stored values) plus the fixed three."""
        props = record["properties"]
        wanted = dict.fromkeys([*names, *ALWAYS_RETURNED])
        return self._envelope(record, {name: props.get(name, "") for name in wanted})

    @staticmethod
    def _envelope(record: dict[str, Any], properties: dict[str, Any]) -> dict[str, Any]:
        out = {
            "id": record["id"],
            "properties": properties,
            "createdAt": record["createdAt"],
            "updatedAt": record["updatedAt"],
            "archived": record["archived"],
        }
        if record.get("archivedAt"):
            out["archivedAt"] = record["archivedAt"]
        return out

    def _check_email(self, values: dict[str, str], own_id: str | None, owner: str, claims: _BatchClaims) -> None:
        """Email is unique among live contacts: HubSpot answers 409 CONFLICT naming the holder."""
        email = values.get("email")
        if not email:
            return
        holder = self._by_email.get(email)
        if holder is not None and holder != own_id:
            raise HubSpotError(409, f"Contact already exists. Existing ID: {holder}", "CONFLICT")
        claimed = claims.emails.get(email)
        if claimed is not None and claimed != owner:
            raise HubSpotError(
                409,
                f"Contact already exists. Email {email} is also written by another input of this batch.",
                "CONFLICT",
            )

    # ------------------------------------------------------------------ batch writes

    def _inputs(self, body: Any) -> list[dict[str, Any]]:
        if not isinstance(body, dict) or not isinstance(body.get("inputs"), list):
            raise _bad_request("Invalid input JSON on line 1, column 1: Some required fields were not set: [inputs]")
        inputs = body["inputs"]
        if len(inputs) > MAX_BATCH_INPUTS:
            raise _bad_request(
                f"Batch input is too large: {len(inputs)} inputs given, the limit is {MAX_BATCH_INPUTS}.",
                "TOO_MANY_INPUTS",
            )
        if not all(isinstance(item, dict) for item in inputs):
            raise _bad_request("Invalid input JSON: every input must be an object")
        return inputs

    @staticmethod
    def _reject_duplicates(inputs: list[dict[str, Any]]) -> None:
        """Two inputs for the same record make HubSpot refuse the whole batch, trace ids or not."""
        seen: set[tuple[str, str]] = set()
        duplicates: list[str] = []
        for item in inputs:
            id_property = item.get("idProperty") or "hs_object_id"
            raw_id = _as_text(item.get("id")).strip()
            key = (id_property, raw_id.lower() if id_property == "email" else raw_id)
            if key in seen and raw_id not in duplicates:
                duplicates.append(raw_id)
            seen.add(key)
        if duplicates:
            raise _bad_request(
                f"Duplicate IDs found in batch input: [{', '.join(duplicates)}]. IDs must be unique", "DUPLICATE_ID"
            )

    def _run_batch(
        self,
        inputs: list[dict[str, Any]],
        plan: Callable[[dict[str, Any], _BatchClaims], _Write],
        *,
        ok_status: int,
        upsert: bool = False,
    ) -> tuple[int, dict[str, Any]]:
        """Validate every input, then write. With an objectWriteTraceId on every input, good inputs are
        written and bad ones reported in a 207; otherwise one bad input rejects the whole batch."""
        started = _iso(time.time())
        traced = bool(inputs) and all(_trace_id(item) for item in inputs)
        if upsert and self.strict.no_partial_upserts:
            traced = False
        claims = _BatchClaims()
        writes: list[_Write] = []
        failures: list[tuple[dict[str, Any], HubSpotError]] = []
        for item in inputs:
            try:
                writes.append(plan(item, claims))
            except HubSpotError as err:
                failures.append((item, err))
        if failures and not traced:
            first = failures[0][1]
            details = [d for _, err in failures for d in (err.errors or [])]
            raise HubSpotError(
                first.status,
                first.message,
                first.category,
                errors=details or None,
                context=first.context,
                sub_category=first.sub_category,
            )
        # Strict: batch updates (the only non-upsert batch the sync sends with trace ids) lose the echo.
        echo = upsert or not self.strict.no_update_trace_echo
        results = [self._commit(write, upsert=upsert, echo_trace=echo) for write in writes]
        body: dict[str, Any] = {
            "status": "COMPLETE",
            "results": results,
            "startedAt": started,
            "completedAt": _iso(time.time()),
        }
        if not failures:
            return ok_status, body
        body["numErrors"] = len(failures)
        body["errors"] = [err.batch_item(_trace_id(item)) for item, err in failures]
        return 207, body

    def _commit(self, write: _Write, *, upsert: bool, count: bool = True, echo_trace: bool = True) -> dict[str, Any]:
        now = time.time()
        created = write.record_id is None
        record = self._new_record(now) if write.record_id is None else self.contacts[write.record_id]
        if self._apply(record, write.values, now) or created:
            self._reindex(record["id"])
        email = record["properties"].get("email", "")
        if count:
            self.writes[email] += 1
            self.created[email] += created
        out = self._write_view(record, write.echo)
        if upsert:
            out["new"] = created
        if write.trace_id and echo_trace:
            out["objectWriteTraceId"] = write.trace_id
        return out

    def _claim(self, write: _Write, owner: str, claims: _BatchClaims) -> _Write:
        if write.values.get("email"):
            claims.emails[write.values["email"]] = owner
        if write.record_id is not None:
            claims.records.add(write.record_id)
        return write

    def _plan_upsert(self, item: dict[str, Any], claims: _BatchClaims) -> _Write:
        raw_id = _as_text(item.get("id")).strip()
        if not raw_id:
            raise _bad_request("Invalid input: every upsert input needs an `id`", "REQUIRED_FIELD")
        id_property = item.get("idProperty") or "hs_object_id"
        key = raw_id.lower() if id_property == "email" else raw_id
        target = self._lookup(id_property, key)
        if target is not None and target["id"] in claims.records:
            raise _bad_request(f"Duplicate IDs found in batch input: [{raw_id}]. IDs must be unique", "DUPLICATE_ID")
        values, problems = self._coerce_properties(item.get("properties"))
        if target is None:
            if id_property in ("hs_object_id", "id"):
                raise HubSpotError(404, NOT_FOUND_MESSAGE, "OBJECT_NOT_FOUND", context={"ids": [raw_id]})
            if id_property not in values:
                values[id_property], problem = self._coerce_value(self.properties[id_property], raw_id)
                if problem is not None:
                    problems.append(problem)
        if problems:
            raise _validation_error(problems)
        own_id = target["id"] if target else None
        owner = own_id or f"new:{id_property}:{key}"
        self._check_email(values, own_id, owner, claims)
        echo = list((item.get("properties") or {}).keys())
        if id_property not in ("hs_object_id", "id"):
            echo.append(id_property)
        return self._claim(_Write(own_id, values, echo, _trace_id(item)), owner, claims)

    def _plan_create(self, item: dict[str, Any], claims: _BatchClaims) -> _Write:
        values, problems = self._coerce_properties(item.get("properties"))
        if problems:
            raise _validation_error(problems)
        owner = f"new:{id(item)}"
        self._check_email(values, None, owner, claims)
        echo = list((item.get("properties") or {}).keys())
        return self._claim(_Write(None, values, echo, _trace_id(item)), owner, claims)

    def _plan_update(self, item: dict[str, Any], claims: _BatchClaims) -> _Write:
        raw_id = _as_text(item.get("id")).strip()
        if not raw_id:
            raise _bad_request("Invalid input: every update input needs an `id`", "REQUIRED_FIELD")
        id_property = item.get("idProperty") or "hs_object_id"
        target = self._lookup(id_property, raw_id)
        if target is None:
            raise HubSpotError(404, NOT_FOUND_MESSAGE, "OBJECT_NOT_FOUND", context={"ids": [raw_id]})
        if target["id"] in claims.records:
            raise _bad_request(f"Duplicate IDs found in batch input: [{raw_id}]. IDs must be unique", "DUPLICATE_ID")
        values, problems = self._coerce_properties(item.get("properties"))
        if problems:
            raise _validation_error(problems)
        self._check_email(values, target["id"], target["id"], claims)
        echo = list((item.get("properties") or {}).keys())
        return self._claim(_Write(target["id"], values, echo, _trace_id(item)), target["id"], claims)

    def _batch_upsert(self, req: _Req) -> tuple[int, Any]:
        inputs = self._inputs(req.body)
        self._reject_duplicates(inputs)
        return self._run_batch(inputs, self._plan_upsert, ok_status=200, upsert=True)

    def _batch_create(self, req: _Req) -> tuple[int, Any]:
        return self._run_batch(self._inputs(req.body), self._plan_create, ok_status=201)

    def _batch_update(self, req: _Req) -> tuple[int, Any]:
        inputs = self._inputs(req.body)
        self._reject_duplicates(inputs)
        return self._run_batch(inputs, self._plan_update, ok_status=200)

    def _batch_read(self, req: _Req) -> tuple[int, Any]:
        body = req.json_object()
        inputs = self._inputs(body)
        started = _iso(time.time())
        id_property = body.get("idProperty") or "hs_object_id"
        names = body.get("properties") or None
        archived = req.q_bool("archived")
        results: list[dict[str, Any]] = []
        missing: list[str] = []
        for item in inputs:
            key = _as_text(item.get("id")).strip()
            record = self._lookup(id_property, key, archived=archived)
            if record is None:
                missing.append(key)
            else:
                results.append(self._read_view(record, names))
        out: dict[str, Any] = {
            "status": "COMPLETE",
            "results": results,
            "startedAt": started,
            "completedAt": _iso(time.time()),
        }
        if not missing:
            return 200, out
        error = HubSpotError(404, NOT_FOUND_MESSAGE, "OBJECT_NOT_FOUND", context={"ids": missing})
        out["numErrors"] = 1
        out["errors"] = [error.batch_item(None)]
        return 207, out

    def _batch_archive(self, req: _Req) -> tuple[int, Any]:
        for item in self._inputs(req.body):
            record = self.contacts.get(_as_text(item.get("id")).strip())
            if record is not None and not record["archived"]:
                self._archive(record)
        return 204, None

    # ------------------------------------------------------------------ single-record endpoints

    def _create_contact(self, req: _Req) -> tuple[int, Any]:
        body = req.json_object()
        write = self._plan_create(body, _BatchClaims())
        return 201, self._commit(write, upsert=False)

    def _find_for_path(self, req: _Req, *, archived: bool = False) -> dict[str, Any]:
        id_property = req.q("idProperty") or "hs_object_id"
        record = self._lookup(id_property, req.params["record_id"], archived=archived)
        if record is None:
            raise HubSpotError(
                404,
                "Object not found.  objectId are usually numeric.",
                "OBJECT_NOT_FOUND",
                context={"id": [req.params["record_id"]]},
            )
        return record

    def _get_contact(self, req: _Req) -> tuple[int, Any]:
        record = self._find_for_path(req, archived=req.q_bool("archived"))
        return 200, self._read_view(record, req.q_list("properties"))

    def _update_contact(self, req: _Req) -> tuple[int, Any]:
        body = req.json_object()
        record = self._find_for_path(req)
        values, problems = self._coerce_properties(body.get("properties"))
        if problems:
            raise _validation_error(problems)
        self._check_email(values, record["id"], record["id"], _BatchClaims())
        write = _Write(record["id"], values, list((body.get("properties") or {}).keys()), None)
        return 200, self._commit(write, upsert=False)

    def _archive_contact(self, req: _Req) -> tuple[int, Any]:
        record = self.contacts.get(req.params["record_id"])
        if record is not None and not record["archived"]:
            self._archive(record)
        return 204, None  # HubSpot answers 204 even for an unknown id

    def _gdpr_delete(self, req: _Req) -> tuple[int, Any]:
        """Permanent delete; the email is remembered (HubSpot blocklists it, even when no contact has it)."""
        body = req.json_object()
        object_id = _as_text(body.get("objectId")).strip()
        if not object_id:
            raise _bad_request("Invalid input JSON: Some required fields were not set: [objectId]", "REQUIRED_FIELD")
        if body.get("idProperty") == "email":
            email = object_id.lower()
            record_id = self._by_email.get(email) or next(
                (r["id"] for r in self.contacts.values() if r["properties"].get("email") == email), None
            )
            self.erased_emails.add(email)
        else:
            record_id = object_id if object_id in self.contacts else None
            if record_id is None:
                raise HubSpotError(
                    404,
                    "Object not found.  objectId are usually numeric.",
                    "OBJECT_NOT_FOUND",
                    context={"id": [object_id]},
                )
        if record_id is not None:
            record = self.contacts.pop(record_id)
            email = record["properties"].get("email")
            if email:
                self.erased_emails.add(email)
                if self._by_email.get(email) == record_id:
                    del self._by_email[email]
            self._reindex(record_id)
        return 204, None

    def _list_contacts(self, req: _Req) -> tuple[int, Any]:
        limit = self._int_param(req.q("limit"), 10, "limit")
        if not 1 <= limit <= MAX_PAGE_LIMIT:
            raise _bad_request(f"limit must be between 1 and {MAX_PAGE_LIMIT}; got {limit}", "INVALID_LIMIT")
        after = self._int_param(req.q("after"), 0, "after")
        archived = req.q_bool("archived")
        names = req.q_list("properties")
        records = sorted(
            (r for r in self.contacts.values() if r["archived"] == archived and int(r["id"]) >= after),
            key=lambda r: int(r["id"]),
        )
        page = records[:limit]
        out: dict[str, Any] = {"results": [self._read_view(r, names) for r in page]}
        if len(records) > limit:
            cursor = str(int(page[-1]["id"]) + 1)
            out["paging"] = {
                "next": {"after": cursor, "link": f"{req.base_url}/crm/v3/objects/contacts?after={cursor}"}
            }
        return 200, out

    @staticmethod
    def _int_param(value: Any, default: int, name: str) -> int:
        if value in (None, ""):
            return default
        try:
            return int(value)
        except (TypeError, ValueError):
            raise _bad_request(f"{name} must be an integer; got {value!r}") from None

    # ------------------------------------------------------------------ communication preferences (v3)

    @staticmethod
    def _definition(subscription_id: str, name: str, description: str) -> dict[str, Any]:
        stamp = _iso(time.time())
        return {
            "id": subscription_id,
            "name": name,
            "description": description,
            "purpose": "Marketing",
            "communicationMethod": "Email",
            "isActive": True,
            "isDefault": False,
            "isInternal": False,
            "createdAt": stamp,
            "updatedAt": stamp,
        }

    def _status_of(self, definition: dict[str, Any], email: str) -> dict[str, Any]:
        """One PublicSubscriptionStatus: what HubSpot answers per subscription type for one address."""
        item: dict[str, Any] = {
            "id": definition["id"],
            "name": definition["name"],
            "description": definition["description"],
            "status": "NOT_SUBSCRIBED",
            "sourceOfStatus": "SUBSCRIPTION_STATUS",
        }
        if email in self.opted_out_of_all:
            item["sourceOfStatus"] = "PORTAL_WIDE_STATUS"
            return item
        state = self.subscription_statuses.get((email, definition["id"]))
        if state is not None:
            item["status"] = state["status"]
            for key in ("legalBasis", "legalBasisExplanation"):
                if state.get(key):
                    item[key] = state[key]
        return item

    @staticmethod
    def _preference_email(raw: Any) -> str:
        email = _as_text(raw).strip().lower()
        if not _EMAIL_RE.fullmatch(email):
            raise HubSpotError(400, f"Email address {_as_text(raw)} is invalid", "VALIDATION_ERROR")
        return email

    def _list_subscriptions(self, req: _Req) -> tuple[int, Any]:
        return 200, {"subscriptionDefinitions": [dict(d) for d in self.subscription_definitions.values()]}

    def _email_statuses(self, req: _Req) -> tuple[int, Any]:
        """Every active subscription type, with this address's status (NOT_SUBSCRIBED when never set)."""
        email = self._preference_email(req.params["email"])
        statuses = [self._status_of(d, email) for d in self.subscription_definitions.values() if d["isActive"]]
        return 200, {"recipient": email, "subscriptionStatuses": statuses}

    def _subscribe(self, req: _Req) -> tuple[int, Any]:
        return self._set_status(req, subscribe=True)

    def _unsubscribe(self, req: _Req) -> tuple[int, Any]:
        return self._set_status(req, subscribe=False)

    def _set_status(self, req: _Req, *, subscribe: bool) -> tuple[int, Any]:
        """POST /subscribe or /unsubscribe. Asking for the state the address is already in is a 400
        ("... is already subscribed to ..."), as is an unknown subscription id; an address that opted out
        of all email cannot be subscribed again through the API."""
        body = req.json_object()
        missing = [key for key in ("emailAddress", "subscriptionId") if body.get(key) in (None, "")]
        if missing:
            raise HubSpotError(
                400,
                "Invalid input JSON on line 1, column 2: Cannot build PublicUpdateSubscriptionStatusRequest, "
                f"some of required attributes are not set [{', '.join(missing)}]",
                "VALIDATION_ERROR",
            )
        legal_basis = body.get("legalBasis")
        if legal_basis is not None and legal_basis not in LEGAL_BASES:
            raise HubSpotError(
                400,
                f"Invalid input JSON: Cannot deserialize value of type `LegalBasis` from String {legal_basis!r}: "
                f"not one of the values accepted for Enum class: [{', '.join(sorted(LEGAL_BASES))}]",
                "VALIDATION_ERROR",
            )
        email = self._preference_email(body["emailAddress"])
        subscription_id = _as_text(body["subscriptionId"]).strip()
        definition = self.subscription_definitions.get(subscription_id)
        if definition is None or not definition["isActive"]:
            raise HubSpotError(
                400,
                f"{subscription_id} is not a valid subscription id for this portal",
                "VALIDATION_ERROR",
                context={"subscriptionId": [subscription_id]},
            )
        current = self._status_of(definition, email)["status"]
        explicit = (email, subscription_id) in self.subscription_statuses or email in self.opted_out_of_all
        if subscribe and email in self.opted_out_of_all:
            raise HubSpotError(
                400,
                f"{email} has opted out of all email and cannot be resubscribed through the API",
                "VALIDATION_ERROR",
            )
        if subscribe and current == "SUBSCRIBED":
            raise HubSpotError(
                400, f"{email} is already subscribed to subscription {subscription_id}", "VALIDATION_ERROR"
            )
        if not subscribe and current == "NOT_SUBSCRIBED" and explicit:
            raise HubSpotError(
                400, f"{email} is already unsubscribed from subscription {subscription_id}", "VALIDATION_ERROR"
            )
        self.subscription_statuses[(email, subscription_id)] = {
            "status": "SUBSCRIBED" if subscribe else "NOT_SUBSCRIBED",
            "legalBasis": legal_basis,
            "legalBasisExplanation": body.get("legalBasisExplanation"),
            "updatedAt": _iso(time.time()),
        }
        return 200, self._status_of(definition, email)

    # ------------------------------------------------------------------ search

    def _search(self, req: _Req) -> tuple[int, Any]:
        body = req.json_object()
        groups = body.get("filterGroups") or []
        if not isinstance(groups, list) or len(groups) > MAX_FILTER_GROUPS:
            raise _bad_request(f"Too many filter groups: the limit is {MAX_FILTER_GROUPS}.", "TOO_MANY_FILTER_GROUPS")
        filters = [f for g in groups for f in (g.get("filters") or [])]
        if any(len(g.get("filters") or []) > MAX_FILTERS_PER_GROUP for g in groups) or len(filters) > MAX_FILTERS_TOTAL:
            raise _bad_request(
                f"Too many filters: at most {MAX_FILTERS_PER_GROUP} per group and {MAX_FILTERS_TOTAL} in total.",
                "TOO_MANY_FILTERS",
            )
        for flt in filters:
            name = "hs_object_id" if flt.get("propertyName") == "id" else flt.get("propertyName")
            if flt.get("operator") not in SEARCH_OPERATORS:
                raise _bad_request(f"Unknown filter operator {flt.get('operator')!r}", "INVALID_OPERATOR")
            if not name or self._active_property(name) is None:
                raise _bad_request(
                    f"There was a problem with the request: property {name!r} does not exist.", "PROPERTY_DOESNT_EXIST"
                )
        limit = self._int_param(body.get("limit"), 10, "limit")
        after = self._int_param(body.get("after"), 0, "after")
        if not 0 <= limit <= MAX_SEARCH_LIMIT:
            raise _bad_request(f"limit must be between 0 and {MAX_SEARCH_LIMIT}; got {limit}", "INVALID_LIMIT")
        if after + limit > MAX_SEARCH_RESULTS:
            raise _bad_request(
                f"The search API returns at most {MAX_SEARCH_RESULTS} results per query.", "TOO_MANY_RESULTS"
            )
        self._flush_index()
        text = (body.get("query") or "").strip().lower()
        hits = [
            r
            for r in self._index.values()
            if (
                not groups
                or any(all(self._matches(r["properties"], f) for f in (g.get("filters") or [])) for g in groups)
            )
            and (not text or any(text in (r["properties"].get(p) or "").lower() for p in SEARCH_TEXT_PROPERTIES))
        ]
        hits = self._sort(hits, body.get("sorts") or [])
        page = hits[after : after + limit]
        names = body.get("properties") or None
        out: dict[str, Any] = {"total": len(hits), "results": [self._read_view(r, names) for r in page]}
        if after + limit < len(hits):
            out["paging"] = {"next": {"after": str(after + limit)}}
        return 200, out

    def _sort_key(self, name: str, value: str | None) -> Any:
        defn = self.properties.get(name) or {"type": "string"}
        if value in (None, ""):
            return None
        if defn["type"] == "number":
            try:
                return Decimal(value)
            except InvalidOperation:
                return None
        if defn["type"] in ("date", "datetime"):
            instant = _parse_instant(value)
            return instant.timestamp() if instant else None
        return value.lower()

    def _sort(self, hits: list[dict[str, Any]], sorts: list[Any]) -> list[dict[str, Any]]:
        ordered = sorted(hits, key=lambda r: int(r["id"]))
        for spec in reversed(sorts):
            if isinstance(spec, dict):
                name, descending = spec.get("propertyName", ""), spec.get("direction") == "DESCENDING"
            else:
                name, descending = str(spec).lstrip("-"), str(spec).startswith("-")
            name = "hs_object_id" if name == "id" else name
            present = [r for r in ordered if self._sort_key(name, r["properties"].get(name)) is not None]
            absent = [r for r in ordered if self._sort_key(name, r["properties"].get(name)) is None]
            present.sort(key=lambda r: self._sort_key(name, r["properties"].get(name)), reverse=descending)
            ordered = present + absent
        return ordered

    def _matches(self, props: dict[str, str], flt: dict[str, Any]) -> bool:
        name = "hs_object_id" if flt["propertyName"] == "id" else flt["propertyName"]
        op = flt["operator"]
        actual = props.get(name) or None
        if op in ("HAS_PROPERTY", "NOT_HAS_PROPERTY"):
            return (actual is not None) == (op == "HAS_PROPERTY")
        if op in ("IN", "NOT_IN"):
            hit = actual is not None and any(
                self._compare(name, actual, _as_text(v)) == 0 for v in flt.get("values") or []
            )
            return hit == (op == "IN")
        if op in ("CONTAINS_TOKEN", "NOT_CONTAINS_TOKEN"):
            pattern = _as_text(flt.get("value")).lower()
            hit = actual is not None and any(
                fnmatch.fnmatchcase(token, pattern)
                for token in [actual.lower(), *re.split(r"[\s@,;]+", actual.lower())]
            )
            return hit == (op == "CONTAINS_TOKEN")
        if actual is None:
            return op == "NEQ"
        if op == "BETWEEN":
            low = self._compare(name, actual, _as_text(flt.get("value")))
            high = self._compare(name, actual, _as_text(flt.get("highValue")))
            return low is not None and high is not None and low >= 0 and high <= 0
        result = self._compare(name, actual, _as_text(flt.get("value")))
        if result is None:
            return op == "NEQ"
        return {
            "EQ": result == 0,
            "NEQ": result != 0,
            "LT": result < 0,
            "LTE": result <= 0,
            "GT": result > 0,
            "GTE": result >= 0,
        }[op]

    def _compare(self, name: str, actual: str, wanted: str) -> int | None:
        """-1/0/1 for actual vs wanted, typed by the property (strings compare case-insensitively)."""
        left, right = self._sort_key(name, actual), self._sort_key(name, wanted)
        if left is None or right is None or type(left) is not type(right):
            return None
        return (left > right) - (left < right)

    # ------------------------------------------------------------------ properties and groups

    def _property_or_404(self, name: str, *, archived: bool = False) -> dict[str, Any]:
        defn = self.properties.get(name)
        if defn is None or bool(defn.get("archived")) != archived:
            raise HubSpotError(
                404, f"Unable to find property {name}", "OBJECT_NOT_FOUND", context={"propertyName": [name]}
            )
        return defn

    def _build_property(self, body: dict[str, Any]) -> dict[str, Any]:
        missing = [k for k in ("name", "label", "type", "fieldType", "groupName") if not body.get(k)]
        if missing:
            raise _bad_request(f"Some required fields were not set: [{', '.join(missing)}]", "REQUIRED_FIELD")
        name = str(body["name"])
        if not _NAME_RE.fullmatch(name) or len(name) > 100:
            raise _bad_request(
                f"Property name {name!r} is invalid: use lowercase letters, digits and underscores, "
                "starting with a letter.",
                "INVALID_PROPERTY_NAME",
            )
        if name in self.properties:
            raise HubSpotError(
                409, f"A property named '{name}' already exists.", "OBJECT_ALREADY_EXISTS", context={"name": [name]}
            )
        now = _iso(time.time())
        defn: dict[str, Any] = {
            "updatedAt": now,
            "createdAt": now,
            "name": name,
            "label": "",
            "type": "",
            "fieldType": "",
            "description": "",
            "groupName": "",
            "options": [],
            "displayOrder": -1,
            "calculated": False,
            "externalOptions": False,
            "hasUniqueValue": bool(body.get("hasUniqueValue", False)),
            "hidden": False,
            "modificationMetadata": {"archivable": True, "readOnlyDefinition": False, "readOnlyValue": False},
            "formField": False,
            "archived": False,
        }
        self._apply_property_fields(defn, body)
        return defn

    def _apply_property_fields(self, defn: dict[str, Any], body: dict[str, Any]) -> None:
        """Shared by create and PATCH: copy the writable fields, then check the result is coherent."""
        for key in (
            "label",
            "type",
            "fieldType",
            "description",
            "groupName",
            "displayOrder",
            "hidden",
            "formField",
            "calculationFormula",
            "referencedObjectType",
            "externalOptions",
        ):
            if key in body and body[key] is not None:
                defn[key] = body[key]
        if body.get("options") is not None:
            options = body["options"]
            if not isinstance(options, list) or not all(
                isinstance(o, dict) and o.get("label") is not None and o.get("value") is not None for o in options
            ):
                raise _bad_request("Every option needs a label and a value", "INVALID_OPTIONS")
            values = [str(o["value"]) for o in options]
            if len(set(values)) != len(values):
                raise _bad_request("Option values must be unique", "DUPLICATE_OPTION_VALUE")
            defn["options"] = [
                {
                    "label": str(o["label"]),
                    "value": str(o["value"]),
                    "displayOrder": o.get("displayOrder", i),
                    "hidden": bool(o.get("hidden", False)),
                    "description": o.get("description") or "",
                }
                for i, o in enumerate(options)
            ]
        if defn["type"] not in FIELD_TYPES:
            raise _bad_request(
                f"Property type {defn['type']!r} is invalid; use one of {sorted(FIELD_TYPES)}", "INVALID_PROPERTY_TYPE"
            )
        if defn["fieldType"] not in FIELD_TYPES[defn["type"]]:
            raise _bad_request(
                f"Field type {defn['fieldType']!r} is not valid for a property of type "
                f"{defn['type']!r}; use one of {sorted(FIELD_TYPES[defn['type']])}",
                "INVALID_FIELD_TYPE",
            )
        group = self.groups.get(defn["groupName"])
        if group is None or group["archived"]:
            raise _bad_request(f"Property group {defn['groupName']!r} does not exist", "GROUP_DOESNT_EXIST")

    def _list_properties(self, req: _Req) -> tuple[int, Any]:
        archived = req.q_bool("archived")
        return 200, {
            "results": [copy.deepcopy(p) for p in self.properties.values() if bool(p.get("archived")) == archived]
        }

    def _get_property(self, req: _Req) -> tuple[int, Any]:
        return 200, copy.deepcopy(self._property_or_404(req.params["name"], archived=req.q_bool("archived")))

    def _create_property(self, req: _Req) -> tuple[int, Any]:
        defn = self._build_property(req.json_object())
        self.properties[defn["name"]] = defn
        return 201, copy.deepcopy(defn)

    def _update_property(self, req: _Req) -> tuple[int, Any]:
        defn = self._property_or_404(req.params["name"])
        if defn["modificationMetadata"]["readOnlyDefinition"]:
            raise _bad_request(
                f"{defn['name']} is a HubSpot-defined property whose definition cannot be changed",
                "READ_ONLY_DEFINITION",
            )
        updated = copy.deepcopy(defn)
        self._apply_property_fields(updated, req.json_object())
        updated["updatedAt"] = _iso(time.time())
        self.properties[defn["name"]] = updated
        return 200, copy.deepcopy(updated)

    def _archive_property(self, req: _Req) -> tuple[int, Any]:
        defn = self._property_or_404(req.params["name"])
        if not defn["modificationMetadata"]["archivable"]:
            raise _bad_request(f"{defn['name']} is a HubSpot-defined property and cannot be archived", "NOT_ARCHIVABLE")
        defn["archived"] = True
        defn["archivedAt"] = _iso(time.time())
        return 204, None

    def _batch_create_properties(self, req: _Req) -> tuple[int, Any]:
        started = _iso(time.time())
        results, errors = [], []
        for item in self._inputs(req.body):
            try:
                defn = self._build_property(item)
            except HubSpotError as err:
                errors.append(err.batch_item(None))
                continue
            self.properties[defn["name"]] = defn
            results.append(copy.deepcopy(defn))
        out: dict[str, Any] = {
            "status": "COMPLETE",
            "results": results,
            "startedAt": started,
            "completedAt": _iso(time.time()),
        }
        if not errors:
            return 201, out
        out.update(numErrors=len(errors), errors=errors)
        return 207, out

    def _batch_read_properties(self, req: _Req) -> tuple[int, Any]:
        body = req.json_object()
        started = _iso(time.time())
        archived = bool(body.get("archived", False))
        results, missing = [], []
        for item in self._inputs(body):
            defn = self.properties.get(str(item.get("name")))
            if defn is None or bool(defn.get("archived")) != archived:
                missing.append(str(item.get("name")))
            else:
                results.append(copy.deepcopy(defn))
        out: dict[str, Any] = {
            "status": "COMPLETE",
            "results": results,
            "startedAt": started,
            "completedAt": _iso(time.time()),
        }
        if not missing:
            return 200, out
        error = HubSpotError(
            404, f"Unable to find properties {missing}", "OBJECT_NOT_FOUND", context={"propertyName": missing}
        )
        out.update(numErrors=1, errors=[error.batch_item(None)])
        return 207, out

    def _batch_archive_properties(self, req: _Req) -> tuple[int, Any]:
        for item in self._inputs(req.body):
            defn = self._active_property(str(item.get("name")))
            if defn is not None and defn["modificationMetadata"]["archivable"]:
                defn["archived"] = True
                defn["archivedAt"] = _iso(time.time())
        return 204, None

    def _group_or_404(self, name: str) -> dict[str, Any]:
        group = self.groups.get(name)
        if group is None or group["archived"]:
            raise HubSpotError(
                404, f"Unable to find property group {name}", "OBJECT_NOT_FOUND", context={"groupName": [name]}
            )
        return group

    def _list_groups(self, req: _Req) -> tuple[int, Any]:
        return 200, {"results": [dict(g) for g in self.groups.values() if not g["archived"]]}

    def _get_group(self, req: _Req) -> tuple[int, Any]:
        return 200, dict(self._group_or_404(req.params["name"]))

    def _create_group(self, req: _Req) -> tuple[int, Any]:
        body = req.json_object()
        missing = [k for k in ("name", "label") if not body.get(k)]
        if missing:
            raise _bad_request(f"Some required fields were not set: [{', '.join(missing)}]", "REQUIRED_FIELD")
        name = str(body["name"])
        if not _NAME_RE.fullmatch(name):
            raise _bad_request(f"Property group name {name!r} is invalid", "INVALID_GROUP_NAME")
        if name in self.groups:
            raise HubSpotError(
                409,
                f"A property group named '{name}' already exists.",
                "OBJECT_ALREADY_EXISTS",
                context={"name": [name]},
            )
        group = {
            "name": name,
            "label": str(body["label"]),
            "displayOrder": int(body.get("displayOrder", -1)),
            "archived": False,
        }
        self.groups[name] = group
        return 201, dict(group)

    def _update_group(self, req: _Req) -> tuple[int, Any]:
        group = self._group_or_404(req.params["name"])
        body = req.json_object()
        if body.get("label") is not None:
            group["label"] = str(body["label"])
        if body.get("displayOrder") is not None:
            group["displayOrder"] = int(body["displayOrder"])
        return 200, dict(group)

    def _archive_group(self, req: _Req) -> tuple[int, Any]:
        group = self._group_or_404(req.params["name"])
        if group["name"] in standard_groups():
            raise _bad_request(f"{group['name']} is a HubSpot-defined group and cannot be archived", "NOT_ARCHIVABLE")
        if any(p["groupName"] == group["name"] and not p.get("archived") for p in self.properties.values()):
            raise _bad_request(f"Property group {group['name']} still holds properties", "GROUP_NOT_EMPTY")
        group["archived"] = True
        return 204, None


def main(argv: list[str] | None = None) -> int:
    """Serve the emulator in the foreground (benchmarks, docker/dev experiments)."""
    parser = argparse.ArgumentParser(
        description="Local HubSpot CRM v3 emulator (contacts, properties, GDPR, communication preferences)."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8099, help="0 picks a free port (printed on start)")
    parser.add_argument("--token", default="test-token", help="the only bearer token accepted")
    parser.add_argument("--rate-limit", type=int, default=100, help="requests per rolling window")
    parser.add_argument("--window-seconds", type=float, default=10.0)
    parser.add_argument("--daily-limit", type=int, default=250_000)
    parser.add_argument("--search-lag", type=float, default=0.0, help="seconds before writes show in search")
    parser.add_argument("--record-bodies", action="store_true", help="keep request bodies in the call log")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    emulator = HubSpotEmulator(
        token=args.token,
        rate_limit=args.rate_limit,
        window_seconds=args.window_seconds,
        daily_limit=args.daily_limit,
        port=args.port,
        host=args.host,
        search_lag_seconds=args.search_lag,
        record_bodies=args.record_bodies,
    )
    emulator.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

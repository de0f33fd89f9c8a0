"""The form endpoints: validate, decide spam, store durably, answer. Nothing else runs in the request.

Storing goes through the app's group commit (forms/group_commit.py): requests that arrive together
share one transaction, published to the broker as one message right after the commit, before the answers.

Example (JSON):
    POST /forms/info-packet  {"email": "ann@example.org", "first_name": "Ann"}
    202 {"status": "accepted", "id": "3f2a...", "message": "Thanks for your interest!"}

Example (a browser without JavaScript, Accept: text/html):
    POST /forms/newsletter  email=ann%40example.org   ->  303 See Other, Location: /thank-you?form=newsletter
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlencode

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from starlette.datastructures import State
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.types import Receive, Scope, Send

from leadsync import logs
from leadsync.config import Settings
from leadsync.forms.negotiation import FormPost, PayloadError, read_payload, wants_html
from leadsync.forms.pages import back_link, render_errors
from leadsync.forms.schemas import FORM_KEYS, MESSAGES, MetaFields, validate
from leadsync.forms.spam import SpamGuard, refused_email
from leadsync.kinds import FormKind
from leadsync.storage.db import get_sessionmaker
from leadsync.storage.submissions import NewSubmission, StoreOutcome, store_submissions

log = logging.getLogger(__name__)


class FormEndpoint:
    """POST /forms/{form}, run by Starlette's Route as a plain ASGI app (a class, so Route adds no
    Request/Response wrapper). The common answer, 202 JSON, is sent as two ASGI messages; errors, HTML
    answers and redirects are Starlette responses. The middleware (security headers, CORS, shedding) is
    the app's, as for every route."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        post = FormPost(scope, receive)
        response = await submit(post)
        if isinstance(response, Accepted):
            await send({"type": "http.response.start", "status": 202, "headers": response.headers})
            await send({"type": "http.response.body", "body": response.body})
        else:
            await response(scope, receive, send)


@dataclass(frozen=True, slots=True)
class Accepted:
    """The 202 JSON answer, ready for the wire."""

    body: bytes

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        return [(b"content-type", b"application/json"), (b"content-length", str(len(self.body)).encode())]


async def submit(post: FormPost) -> Response | Accepted:
    form: str = post.scope["path_params"]["form"]
    state = post.scope["app"].state
    settings: Settings = state.settings
    html = wants_html(post.headers)
    if form not in MESSAGES:
        return _errors(404, {"form": f"Unknown form; use one of: {', '.join(MESSAGES)}."}, html, form)
    try:
        payload = await read_payload(post, settings.max_body_bytes)
    except PayloadError as error:
        return _errors(error.status, error.errors, html, form)

    parsed, errors = validate(form, payload)
    if parsed is not None:
        errors.update(refused_email(getattr(parsed, "email", ""), settings))
    key = post.headers.get("idempotency-key")
    if key is not None and not (0 < len(key) <= 255 and key.isprintable()):
        errors["Idempotency-Key"] = "Must be 1 to 255 printable characters."
    if errors or parsed is None:
        return _errors(422, errors, html, form)

    # The same rules for every form and encoding; spam is counted and answered like a success (forms/spam.py).
    # The rate limits are counted for the whole batch by the group-commit writer (SpamGuard.count).
    spam_reason = _guard(state).content_reason(parsed)
    new = _new_submission(post, settings, form, parsed, payload, key, spam_reason)
    try:
        outcome = await state.group_commit.store(new)
    except SQLAlchemyError:  # logged once for the whole batch (forms/group_commit.py)
        return _unavailable(html)
    if outcome.key_conflict:
        return _errors(422, {"Idempotency-Key": "This key was already used for a different submission."}, html, form)
    logs.bind(submission_id=outcome.submission_id)  # on every later line of this request
    if not outcome.created:
        log.info("submission replayed (same Idempotency-Key): form=%s", new.form)
    if html:
        return _thank_you(form, settings, post, new.page_url)
    return _accepted(form, outcome.submission_id)


def _guard(state: State) -> SpamGuard:
    """The app's SpamGuard (its counters live as long as the app)."""
    guard = getattr(state, "spam_guard", None)
    if guard is None:
        guard = state.spam_guard = SpamGuard(state.settings)
    return guard


def store_batch(batch: Sequence[NewSubmission]) -> list[StoreOutcome]:
    """The group commit's writer (forms/group_commit.py): one transaction for the whole batch.

    A batch of nothing but spam (counts and the day's small sample, never a lead) commits without waiting for
    PostgreSQL's WAL flush: a flood's batches then cost the writer no fsync each, and the real leads behind
    them do not wait for those (`./bench/run flood`). A crash can lose the last ~0.2 s of spam counts
    (wal_writer_delay); a batch with any lead in it waits for the flush as always.
    """
    with get_sessionmaker()() as session:
        if all(new.spam_reason or new.spam for new in batch) and session.get_bind().dialect.name == "postgresql":
            session.execute(text("SET LOCAL synchronous_commit = off"))
        return store_submissions(session, batch)


def _header_text(post: FormPost, name: str, max_length: int) -> str | None:
    """A request header fit for a column: control characters dropped, cut to the column's length."""
    value = post.headers.get(name, "")
    if not value.isprintable():
        value = "".join(char for char in value if char.isprintable())
    return value[:max_length] or None


def _referer(post: FormPost) -> str | None:
    """The Referer as a fallback page URL, only when it is a web address that fits the column."""
    value = _header_text(post, "referer", 4096)
    if value and len(value) <= 2048 and value.lower().startswith(("http://", "https://")):
        return value
    return None


def _raw_value(value: object) -> object:
    """One payload value as received, safe for any JSON column (no NUL, no lone surrogate, no NaN)."""
    if isinstance(value, str):
        return value.encode("utf-8", "replace").decode("utf-8").replace("\x00", "\ufffd")
    if isinstance(value, bool | int | None):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    return str(value)[:200]


def _new_submission(
    post: FormPost,
    settings: Settings,
    form: str,
    parsed: MetaFields,
    payload: dict,
    key: str | None,
    spam_reason: str | None,
) -> NewSubmission:
    fields = parsed.model_dump(exclude={"website", "ts_token"}, exclude_none=True)
    email = fields.pop("email")
    # Only a retry with the same Idempotency-Key is compared with its first post's hash: without a key, the
    # hash (a sorted JSON dump and a sha256, ~5% of a post's CPU in the profile) would never be read.
    request_hash = (
        hashlib.sha256(json.dumps([form, email, fields], sort_keys=True).encode()).hexdigest() if key else None
    )
    client = post.client_host
    user_agent = _header_text(post, "user-agent", 512)
    known = type(parsed).model_fields  # the payload as received, but only the form's own fields
    return NewSubmission(
        form=FORM_KEYS[form],
        email=email,
        fields=fields,
        raw={k: _raw_value(v) for k, v in payload.items() if k in known and not isinstance(v, dict | list)},
        ip=client,
        user_agent=user_agent,
        page_url=parsed.page_url or _referer(post),
        utm=parsed.utm(),
        consent={
            "newsletter": FORM_KEYS[form] == FormKind.NEWSLETTER or bool(fields.get("newsletter_opt_in")),
            "text_version": settings.consent_text_version,
            "ip": client,
            "user_agent": user_agent,
            "page_url": parsed.page_url,
        },
        idempotency_key=key,
        request_hash=request_hash,
        spam_reason=spam_reason,
    )


def _thank_you(form: str, settings: Settings, post: FormPost, page_url: str | None) -> Response:
    """A browser without JavaScript: 303 to the thank-you page, which links back to the article."""
    query = {"form": form}
    if back := back_link(page_url, post.request()):
        query["back"] = back
    separator = "&" if "?" in settings.thank_you_url else "?"
    return RedirectResponse(f"{settings.thank_you_url}{separator}{urlencode(query)}", status_code=303)


def _accepted(form: str, submission_id: str) -> Accepted:
    # Written as Starlette's JSONResponse writes JSON (compact, UTF-8), like every other answer of the API, from
    # parts encoded once: json.dumps was ~2% of a post's CPU. Every id is models.new_id's 32 hex digits (a
    # replay's too: it is the first submission's), so it needs no escaping.
    return Accepted(b'{"status":"accepted","id":"%s",%s' % (submission_id.encode(), _ACCEPTED_TAIL[form]))


_ACCEPTED_TAIL = {
    form: b'"message":%s}' % json.dumps(message, ensure_ascii=False).encode() for form, message in MESSAGES.items()
}


def _errors(status: int, errors: dict[str, str], html: bool, form: str) -> Response:
    log.info("post to %s refused (%d): %s", form[:40], status, ", ".join(sorted(errors)[:10]))  # names only
    if html:
        return render_errors(status, errors, form)
    return JSONResponse({"errors": errors}, status_code=status)


def _unavailable(html: bool) -> Response:
    message = "We could not save your request right now. Please try again in a minute."
    if html:
        return render_errors(503, {"service": message}, None, headers={"Retry-After": "30"})
    return JSONResponse({"errors": {"service": message}}, status_code=503, headers={"Retry-After": "30"})

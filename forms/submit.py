"""The form endpoints: validate, store durably, enqueue, answer. Nothing else runs in the request.

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
from urllib.parse import urlencode

from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from leadsync.config import Settings
from leadsync.forms.negotiation import PayloadError, read_payload, wants_html
from leadsync.forms.pages import render_errors
from leadsync.forms.schemas import FORM_KEYS, MESSAGES, MetaFields, validate
from leadsync.forms.tokens import looks_like_spam
from leadsync.storage.db import get_sessionmaker
from leadsync.storage.submissions import NewSubmission, StoreOutcome, store_submission
from leadsync.worker.signatures import enqueue_submission

log = logging.getLogger(__name__)
CONSENT_TEXT_VERSION = "2026-11"


async def submit(request: Request) -> Response:
    form: str = request.path_params["form"]
    settings: Settings = request.app.state.settings
    html = wants_html(request)
    if form not in MESSAGES:
        return _errors(404, {"form": f"Unknown form; use one of: {', '.join(MESSAGES)}."}, html, form)
    try:
        payload = await read_payload(request, settings.max_body_bytes)
    except PayloadError as error:
        return _errors(error.status, error.errors, html, form)

    parsed, errors = validate(form, payload)
    key = request.headers.get("idempotency-key")
    if key is not None and not (0 < len(key) <= 255 and key.isprintable()):
        errors["Idempotency-Key"] = "Must be 1 to 255 printable characters."
    if errors or parsed is None:
        return _errors(422, errors, html, form)

    bad_token = looks_like_spam(parsed.ts_token, settings)  # a bad render-time token counts as the honeypot
    new = _new_submission(request, form, parsed, payload, key, bad_token)
    try:
        outcome = await run_in_threadpool(_store, new)
    except SQLAlchemyError:
        log.exception("database unavailable; submission not stored")
        return _unavailable(html)
    if outcome.key_conflict:
        return _errors(422, {"Idempotency-Key": "This key was already used for a different submission."}, html, form)
    if outcome.created and not new.spam:
        await run_in_threadpool(enqueue_submission, outcome.submission.id)
    return _accepted(form, outcome.submission.id, html, settings)


def _store(new: NewSubmission) -> StoreOutcome:
    with get_sessionmaker()() as session:
        return store_submission(session, new)


def _new_submission(
    request: Request, form: str, parsed: MetaFields, payload: dict, key: str | None, bad_token: bool = False
) -> NewSubmission:
    fields = parsed.model_dump(exclude={"website", "ts_token"}, exclude_none=True)
    email = fields.pop("email")
    request_hash = hashlib.sha256(json.dumps([form, email, fields], sort_keys=True).encode()).hexdigest()
    client = request.client.host if request.client else None
    user_agent = (request.headers.get("user-agent") or "")[:512] or None
    return NewSubmission(
        form=FORM_KEYS[form],
        email=email,
        fields=fields,
        raw={k: v for k, v in payload.items() if isinstance(v, str | int | float | bool) or v is None},
        ip=client,
        user_agent=user_agent,
        page_url=parsed.page_url or request.headers.get("referer"),
        utm=parsed.utm(),
        consent={
            "newsletter": form == "newsletter" or bool(fields.get("newsletter_opt_in")),
            "text_version": CONSENT_TEXT_VERSION,
            "ip": client,
            "user_agent": user_agent,
            "page_url": parsed.page_url,
        },
        spam=bool(parsed.website) or bad_token,  # the honeypot: kept for counting, never processed
        idempotency_key=key,
        request_hash=request_hash,
    )


def _accepted(form: str, submission_id: str, html: bool, settings: Settings) -> Response:
    if html:
        separator = "&" if "?" in settings.thank_you_url else "?"
        return RedirectResponse(f"{settings.thank_you_url}{separator}{urlencode({'form': form})}", status_code=303)
    return JSONResponse({"status": "accepted", "id": submission_id, "message": MESSAGES[form]}, status_code=202)


def _errors(status: int, errors: dict[str, str], html: bool, form: str) -> Response:
    if html:
        return render_errors(status, errors, form)
    return JSONResponse({"errors": errors}, status_code=status)


def _unavailable(html: bool) -> Response:
    message = "We could not save your request right now. Please try again in a minute."
    if html:
        return render_errors(503, {"service": message}, None, headers={"Retry-After": "30"})
    return JSONResponse({"errors": {"service": message}}, status_code=503, headers={"Retry-After": "30"})

"""Newsletter links from emails: confirm (double opt-in) and unsubscribe (RFC 8058 one-click).

GET only shows a page with a button: mail scanners that prefetch links must not confirm or unsubscribe
anyone. The change happens on POST, which is also what mail clients' one-click unsubscribe sends
(`List-Unsubscribe=One-Click` in the body, the token in the URL).

A link that is forged, expired, malformed (non-ASCII, bad base64, bad JSON, wrong types), for a forgotten
person, or a confirm link older than the person's latest unsubscribe gets the same 400 page. Each client
address may open RATE_LIMIT_LINKS_PER_IP links (GET and POST together); beyond that a 429 page.

Example:
    $ curl -si -X POST 'http://127.0.0.1:8000/newsletter/unsubscribe?token=caf%C3%A9' | head -1
    HTTP/1.1 400 Bad Request
"""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from leadsync.config import Settings
from leadsync.forms.pages import render
from leadsync.kinds import NewsletterStatus
from leadsync.signing import BadToken, Claims, verify
from leadsync.storage.contacts import set_newsletter_status
from leadsync.storage.db import session_scope
from leadsync.storage.models import utcnow

_UNSUBSCRIBED = "You are unsubscribed. You will get no more newsletters."
ACTIONS = {  # the link's purpose -> (the status it sets, the button, the page after the click)
    "confirm": (NewsletterStatus.SUBSCRIBED, "Confirm my subscription", "You have Successfully Subscribed!"),
    "unsubscribe": (NewsletterStatus.UNSUBSCRIBED, "Unsubscribe me", _UNSUBSCRIBED),
}


def _claims(request: Request, purpose: str, token: str | None) -> Claims | None:
    settings: Settings = request.app.state.settings
    try:
        return verify(token or "", settings.signing_keys, purpose)
    except BadToken:
        return None


def _invalid() -> HTMLResponse:
    message = "This link is not valid any more. Please sign up again from our website."
    return render("link.html", 400, title="Link not valid", message=message, action=None, token=None)


async def _too_many(request: Request) -> HTMLResponse | None:
    """The 429 page when this client is over RATE_LIMIT_LINKS_PER_IP, else None."""
    if await request.app.state.spam_guard.allow_link(request.client.host if request.client else None):
        return None
    message = "Too many attempts from your network. Please try again in a few minutes."
    headers = {"Retry-After": "600"}
    return render("link.html", 429, headers, title="Please wait", message=message, action=None, token=None)


async def show(request: Request) -> Response:
    """The page behind the link: one button, nothing changes yet."""
    if (refused := await _too_many(request)) is not None:
        return refused
    purpose = request.path_params["action"]
    token = request.query_params.get("token")
    if purpose not in ACTIONS or _claims(request, purpose, token) is None:
        return _invalid()
    _, button, _ = ACTIONS[purpose]
    return render("link.html", title=button, message=None, action=purpose, token=token, button=button)


async def apply(request: Request) -> Response:
    """The click (or a mail client's one-click POST): change the subscription, answer a short page."""
    if (refused := await _too_many(request)) is not None:
        return refused
    purpose = request.path_params["action"]
    token = request.query_params.get("token")
    if token is None and "form" in request.headers.get("content-type", ""):
        try:
            token = str((await request.form(max_files=0, max_fields=10)).get("token") or "") or None
        except Exception:  # a malformed body is the client's fault: answered as a bad link, never a 500
            token = None
    claims = _claims(request, purpose, token) if purpose in ACTIONS else None
    if claims is None:
        return _invalid()
    status, _, done = ACTIONS[purpose]

    def change() -> bool:
        with session_scope() as session:
            return set_newsletter_status(session, claims, status, utcnow()) is not None

    if not await run_in_threadpool(change):
        return _invalid()
    return render("link.html", title=done, message=done, action=None, token=None)

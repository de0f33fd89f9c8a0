"""Web security: the headers every response carries (added by forms/edge.py) and the OPS_TOKEN check of
operations endpoints (the policy itself is leadsync/ops_auth.py, shared with the CLI).

Example (an operations endpoint):
    async def metrics(request: Request) -> Response:
        if (refused := require_ops_token(request)) is not None:
            return refused
        ...
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from leadsync import ops_auth
from leadsync.config import Settings

# Pages are served from our origin only: the demo loads /static/v1/leadsync-forms.js and posts to /forms/…;
# pages carry inline <style> (and the honeypot's style attribute), never inline script. Nobody may frame us
# (clickjacking a consent checkbox). JSON answers get the same header: harmless there.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
        "object-src 'none'",
    ]
)
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "strict-origin-when-cross-origin",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
}
STRICT_TRANSPORT_SECURITY = "max-age=31536000"  # a year; sent only when PUBLIC_BASE_URL is https


def require_ops_token(request: Request) -> JSONResponse | None:
    """None when the request carries `Authorization: Bearer <OPS_TOKEN>`, else the 401/403 answer to return.

    Fails closed: with OPS_TOKEN unset, operations endpoints answer 403 rather than serve anyone.
    """
    settings: Settings = request.app.state.settings
    refusal = ops_auth.http_refusal(settings, request.headers.get("authorization", ""))
    if refusal is None:
        return None
    headers = {"WWW-Authenticate": ops_auth.CHALLENGE} if refusal.status == 401 else None
    return JSONResponse({"errors": {refusal.field: refusal.message}}, refusal.status, headers=headers)

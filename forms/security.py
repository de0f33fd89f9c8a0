"""Web security for every response, the client address every per-IP rule sees, and the OPS_TOKEN check of
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
from starlette.types import ASGIApp, Message, Receive, Scope, Send

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


class SecurityHeadersMiddleware:
    """Adds SECURITY_HEADERS (and HSTS when PUBLIC_BASE_URL is https) to every HTTP response, errors included."""

    def __init__(self, app: ASGIApp, hsts: bool = False) -> None:
        self.app = app
        headers = dict(SECURITY_HEADERS)
        if hsts:
            headers["Strict-Transport-Security"] = "max-age=31536000"
        self._raw = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                extra = [(name, value) for name, value in self._raw if name not in present]
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, send_with_headers)


class UnwrapMappedClient:
    """`::ffff:203.0.113.9` -> `203.0.113.9` in the ASGI scope's client, before any route reads it.

    uvicorn bound to `::` reports IPv4 visitors like that; left as is, every IPv4 visitor would share one
    IPv6 /64 rate-limit bucket. Runs inside uvicorn's ProxyHeadersMiddleware, so it sees (and unwraps) the
    forwarded address when the proxy is trusted (FORWARDED_ALLOW_IPS). Stored IPs and consent records are
    unwrapped too, since they read the same scope.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        client = scope.get("client")
        if client and client[0] and client[0].startswith("::ffff:"):
            from leadsync.forms.spam import unwrap_ip  # spam imports schemas; keep this module import-light

            scope = {**scope, "client": (unwrap_ip(client[0]), client[1])}
        await self.app(scope, receive, send)


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

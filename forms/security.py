"""Web security for every response, the client address every per-IP rule sees, and the OPS_TOKEN check for
operations endpoints and commands.

Example (an operations endpoint):
    async def metrics(request: Request) -> Response:
        if (refused := require_ops_token(request)) is not None:
            return refused
        ...

Example (a state-changing command):
    if not ops_token_matches(click_option_value, get_settings()):
        raise click.ClickException("OPS_TOKEN required")
"""

from __future__ import annotations

import hmac

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

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


def ops_token_matches(presented: str | None, settings: Settings) -> bool:
    """Whether `presented` is OPS_TOKEN, compared in constant time. No OPS_TOKEN set: nothing matches."""
    expected = settings.ops_token.get_secret_value() if settings.ops_token else ""
    if not expected or not presented:
        return False
    return hmac.compare_digest(presented.encode("utf-8"), expected.encode("utf-8"))


def require_ops_token(request: Request) -> JSONResponse | None:
    """None when the request carries `Authorization: Bearer <OPS_TOKEN>`, else the 401/403 answer to return.

    Fails closed: with OPS_TOKEN unset, operations endpoints answer 403 rather than serve anyone.
    """
    settings: Settings = request.app.state.settings
    if not (settings.ops_token and settings.ops_token.get_secret_value()):
        return JSONResponse({"errors": {"authorization": "OPS_TOKEN is not configured on this server."}}, 403)
    scheme, _, presented = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not ops_token_matches(presented.strip(), settings):
        return JSONResponse(
            {"errors": {"authorization": "Send Authorization: Bearer <OPS_TOKEN>."}},
            401,
            headers={"WWW-Authenticate": 'Bearer realm="leadsync-ops"'},
        )
    return None

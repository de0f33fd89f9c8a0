"""The app's edge, one ASGI layer: the client address every rule sees, the request's log id, CORS, and the
security headers of every answer.

These were three middlewares (ours for the address and the headers, Starlette's CORSMiddleware), three calls
and three wrappers of `send` a request, and Starlette's CORS builds a `Headers` and a `MutableHeaders` a
request: 41-48 µs of a ~500 µs form post (`./bench/run intake`'s profile, docs/benchmarks.md "Seventh round").
Here the CORS rules stay Starlette's: `Edge` is a CORSMiddleware, its preflight answers and its origin check
are the library's own. Only the simple answer's headers are added here, as raw pairs computed once, in one
wrapper of `send`: 14-20 µs less a post, the same headers byte for byte
(tests/security/test_edge.py compares every case with the three layers it replaces).

Example:
    Middleware(Edge, hsts=True, allow_origins=["https://clinic.example"], allow_methods=["GET", "POST"])
"""

from __future__ import annotations

from typing import Any

from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from leadsync import logs
from leadsync.forms.security import SECURITY_HEADERS, STRICT_TRANSPORT_SECURITY

RawHeaders = list[tuple[bytes, bytes]]
VARY = b"vary"


class Edge(CORSMiddleware):
    """Unwraps `::ffff:203.0.113.9` to `203.0.113.9` in the scope's client, then answers CORS preflights and
    adds the CORS and security headers to every HTTP answer, errors included.

    The address: uvicorn bound to `::` reports IPv4 visitors like that; left as is, every IPv4 visitor would
    share one IPv6 /64 rate-limit bucket. It runs inside uvicorn's ProxyHeadersMiddleware, so it sees (and
    unwraps) the forwarded address when the proxy is trusted (FORWARDED_ALLOW_IPS); stored IPs and consent
    records read the same scope.
    The log id: every line logged for the request carries `request_id` (leadsync/logs.py `begin_request`).
    The security headers: each is added unless the answer set its own.
    """

    def __init__(self, app: ASGIApp, hsts: bool = False, **cors: Any) -> None:
        super().__init__(app, **cors)
        security = dict(SECURITY_HEADERS)
        if hsts:
            security["Strict-Transport-Security"] = STRICT_TRANSPORT_SECURITY
        self._security = _raw(security)
        self._simple = _raw(self.simple_headers)  # Starlette's own: Expose-Headers (and Allow-Origin: * if "*")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        logs.begin_request(scope["headers"])
        client = scope.get("client")
        if client and client[0] and client[0].startswith("::ffff:"):
            from leadsync.forms.spam import unwrap_ip  # spam imports schemas; keep this module import-light

            scope = {**scope, "client": (unwrap_ip(client[0]), client[1])}
        origin = next((value for name, value in scope["headers"] if name == b"origin"), None)
        if origin is not None and scope["method"] == "OPTIONS":
            headers = Headers(scope=scope)
            if "access-control-request-method" in headers:  # a preflight: Starlette's answer, with our headers
                await self.preflight_response(request_headers=headers)(scope, receive, self._sender(send, []))
                return
        added: RawHeaders = []
        if origin is not None:
            added += self._simple
            # Starlette's rule: mirror an allowed origin unless every origin is allowed ("*" is then in _simple).
            if not self.allow_all_origins and self.is_allowed_origin(origin=origin.decode("latin-1")):
                added.append((b"access-control-allow-origin", origin))
        await self.app(scope, receive, self._sender(send, added, vary=True))

    def _sender(self, send: Send, added: RawHeaders, vary: bool = False) -> Send:
        security = self._security

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers: RawHeaders = list(message.get("headers", ()))
                present = {name.lower() for name, _ in headers}
                headers += [pair for pair in security if pair[0] not in present]
                headers += added
                if vary:  # as Starlette's CORS: every simple answer varies by Origin, merged into one Vary
                    headers = _vary_by_origin(headers, VARY in present)
                message["headers"] = headers
            await send(message)

        return send_with_headers


def _vary_by_origin(headers: RawHeaders, had_vary: bool) -> RawHeaders:
    if not had_vary:
        headers.append((VARY, b"Origin"))
        return headers
    values = [value for name, value in headers if name.lower() == VARY]
    return [pair for pair in headers if pair[0].lower() != VARY] + [(VARY, b", ".join([*values, b"Origin"]))]


def _raw(headers: dict[str, str]) -> RawHeaders:
    return [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()]

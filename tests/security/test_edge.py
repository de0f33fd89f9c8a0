"""forms/edge.py answers exactly as the three layers it replaced: Starlette's CORSMiddleware inside a layer adding
the security headers, inside one unwrapping `::ffff:` client addresses.

Every request of a matrix (origins allowed, refused or absent; preflights good and bad; answers with their own
Vary or CSP; allow-lists with and without "*"; HSTS on and off) goes through both, and the status, the body and
the headers (as a multiset: the order of different names carries no meaning in HTTP) must be equal.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from leadsync.forms.edge import Edge
from leadsync.forms.security import SECURITY_HEADERS, STRICT_TRANSPORT_SECURITY

SITE = "https://clinic.example"
CORS = {
    "allow_methods": ["GET", "POST"],
    "allow_headers": ["Content-Type", "Idempotency-Key"],
    "expose_headers": ["Retry-After"],
    "max_age": 600,
}


class Reference:
    """The replaced stack: unwrap the client, then add security headers around Starlette's CORS."""

    def __init__(self, app: ASGIApp, hsts: bool, **cors: Any) -> None:
        self.cors = CORSMiddleware(app, **cors)
        headers = dict(SECURITY_HEADERS)
        if hsts:
            headers["Strict-Transport-Security"] = STRICT_TRANSPORT_SECURITY
        self.raw = [(name.lower().encode(), value.encode()) for name, value in headers.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        client = scope["client"]
        if client[0].startswith("::ffff:"):
            scope = {**scope, "client": (client[0].removeprefix("::ffff:"), client[1])}

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                message["headers"] = [*message.get("headers", []), *(h for h in self.raw if h[0] not in present)]
            await send(message)

        await self.cors(scope, receive, with_headers)


def inner(own_headers: list[tuple[bytes, bytes]]) -> ASGIApp:
    """An answer that echoes the client address it saw, with its own headers."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        body = scope["client"][0].encode()
        headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode()), *own_headers]
        await send({"type": "http.response.start", "status": 202, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


def answer(app: ASGIApp, method: str, headers: list[tuple[bytes, bytes]], client: str) -> tuple[Any, ...]:
    messages: list[Message] = []
    scope = {
        "type": "http",
        "method": method,
        "path": "/forms/newsletter",
        "headers": headers,
        "client": (client, 50000),
        "query_string": b"",
    }

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        messages.append(message)

    asyncio.run(app(scope, receive, send))
    start, body = messages[0], b"".join(m.get("body", b"") for m in messages[1:])
    return start["status"], sorted((name.lower(), value) for name, value in start["headers"]), body


ORIGINS = [None, SITE, "https://evil.example", "null", SITE.upper()]
REQUESTS = [
    ("GET", []),
    ("POST", [(b"content-type", b"application/x-www-form-urlencoded")]),
    ("OPTIONS", []),  # no Access-Control-Request-Method: not a preflight
    ("OPTIONS", [(b"access-control-request-method", b"POST")]),
    ("OPTIONS", [(b"access-control-request-method", b"POST"), (b"access-control-request-headers", b"content-type")]),
    ("OPTIONS", [(b"access-control-request-method", b"DELETE")]),
    ("OPTIONS", [(b"access-control-request-method", b"POST"), (b"access-control-request-headers", b"x-evil")]),
    ("OPTIONS", [(b"access-control-request-method", b"POST"), (b"access-control-request-private-network", b"true")]),
]
OWN_HEADERS = [
    [],
    [(b"vary", b"Accept-Encoding")],
    [(b"vary", b"Accept"), (b"vary", b"Cookie")],
    [(b"content-security-policy", b"default-src 'none'"), (b"x-frame-options", b"SAMEORIGIN")],
]


@pytest.mark.parametrize("allow_origins", [[SITE], ["*"], [], [SITE, "https://other.example"]])
@pytest.mark.parametrize("hsts", [False, True])
def test_every_answer_is_the_replaced_layers_answer(allow_origins: list[str], hsts: bool) -> None:
    cases = 0
    for origin, (method, extra), own, client in itertools.product(
        ORIGINS, REQUESTS, OWN_HEADERS, ["203.0.113.9", "::ffff:203.0.113.9", "2001:db8::1"]
    ):
        headers = [(b"host", b"leads.clinic.example"), *extra]
        if origin is not None:
            headers.append((b"origin", origin.encode()))
        ours = answer(Edge(inner(own), hsts=hsts, allow_origins=allow_origins, **CORS), method, headers, client)
        theirs = answer(Reference(inner(own), hsts, allow_origins=allow_origins, **CORS), method, headers, client)
        assert ours == theirs, (origin, method, extra, own, client)
        cases += 1
    assert cases == len(ORIGINS) * len(REQUESTS) * len(OWN_HEADERS) * 3


def test_an_allowed_origin_is_mirrored_and_the_client_unwrapped() -> None:
    """The matrix compares; this names what the comparison protects."""
    app = Edge(inner([]), allow_origins=[SITE], **CORS)
    status, headers, body = answer(app, "POST", [(b"origin", SITE.encode())], "::ffff:203.0.113.9")
    assert status == 202 and body == b"203.0.113.9"
    assert (b"access-control-allow-origin", SITE.encode()) in headers
    assert (b"access-control-expose-headers", b"Retry-After") in headers
    assert (b"vary", b"Origin") in headers
    assert (b"x-frame-options", b"DENY") in headers
    status, headers, body = answer(app, "POST", [(b"origin", b"https://evil.example")], "203.0.113.9")
    assert b"access-control-allow-origin" not in dict(headers)

"""Reading a form post whatever its encoding, and deciding whether the answer is HTML or JSON.

Plain HTML form posts (a browser without JavaScript) get redirects and pages; scripts get JSON.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

from starlette.datastructures import UploadFile
from starlette.requests import ClientDisconnect, Request
from starlette.types import Receive, Scope

MAX_FIELDS = 100  # fields in one urlencoded or multipart body: the packet form has 18; more is a bot


class PayloadError(Exception):
    """The body cannot be read as a form: answered with `status` and field messages."""

    def __init__(self, status: int, errors: dict[str, str]) -> None:
        super().__init__(errors)
        self.status = status
        self.errors = errors


class FormPost:
    """One form post as the endpoint reads it, straight from ASGI: its headers decoded once into a dict (the
    first of a repeated header wins, as in Starlette's `Headers.get`), then its body.

    Why not Starlette's Request on this path: each `headers.get` there walks and decodes the raw list again
    (seven lookups a post), and the Request/Response wrappers around an endpoint cost more than the reading
    itself (forms/submit.py `FormEndpoint`; docs/benchmarks.md). Other routes keep Starlette's objects.
    """

    __slots__ = ("headers", "receive", "scope")

    def __init__(self, scope: Scope, receive: Receive) -> None:
        self.scope = scope
        self.receive = receive
        headers: dict[str, str] = {}
        for name, value in scope["headers"]:
            headers.setdefault(name.decode("latin-1"), value.decode("latin-1"))
        self.headers = headers

    @property
    def client_host(self) -> str | None:
        client = self.scope.get("client")
        return client[0] if client else None

    def request(self) -> Request:
        """Starlette's Request for the same post (multipart parsing, back links on the rare HTML answers)."""
        return Request(self.scope, self.receive)


def wants_html(headers: Mapping[str, str]) -> bool:
    """Browsers posting a form accept text/html; JSON bodies and API clients get JSON."""
    if headers.get("content-type", "").startswith("application/json"):
        return False
    return "text/html" in headers.get("accept", "")


async def read_body(post: FormPost, max_bytes: int) -> bytes:
    """The body, refused with 413 past `max_bytes` (checked before and while reading)."""
    declared = post.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > max_bytes):
        raise PayloadError(413, {"body": f"The form is too large (at most {max_bytes} bytes)."})
    chunks, size = [], 0
    while True:
        message = await post.receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > max_bytes:
            raise PayloadError(413, {"body": f"The form is too large (at most {max_bytes} bytes)."})
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def read_payload(post: FormPost, max_bytes: int) -> dict[str, Any]:
    """Field name -> value from a JSON, urlencoded or multipart body (first value wins on repeats)."""
    body = await read_body(post, max_bytes)
    content_type = post.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/json":
        try:
            data = json.loads(body or b"{}", parse_constant=_no_constant)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise PayloadError(400, {"body": "The body is not valid JSON."}) from None
        if not isinstance(data, dict):
            raise PayloadError(422, {"body": "The body must be a JSON object of form fields."})
        return data
    if content_type in ("application/x-www-form-urlencoded", ""):
        try:
            pairs = parse_urlencoded(body.decode("utf-8"), MAX_FIELDS)
        except (ValueError, UnicodeDecodeError):
            raise PayloadError(400, {"body": "The form data could not be read."}) from None
        return _first_values(pairs)
    if content_type == "multipart/form-data":
        request = post.request()
        request._body = body  # parse the bytes already read and size-checked
        try:
            form = await request.form(max_files=0, max_fields=MAX_FIELDS, max_part_size=max_bytes)
        except Exception:  # malformed multipart of any kind is the client's fault
            raise PayloadError(400, {"body": "The form data could not be read."}) from None
        return _first_values((k, v) for k, v in form.multi_items() if not isinstance(v, UploadFile))
    raise PayloadError(415, {"body": "Send the form as JSON, urlencoded or multipart form data."})


def parse_urlencoded(text: str, max_fields: int) -> list[tuple[str, str]]:
    """`urllib.parse.parse_qsl(text, keep_blank_values=True, max_num_fields=max_fields, errors="strict")`, the
    same pairs and the same ValueError / UnicodeDecodeError, in half its CPU (~11 us instead of ~21 for the
    packet form's 7 fields): a field without "+" or "%" is taken as it is, where parse_qsl replaces and
    unquotes every one. tests/forms/test_negotiation.py compares the two on generated bodies."""
    if text and text.count("&") + 1 > max_fields:
        raise ValueError("Max number of fields exceeded")
    pairs = []
    for field in text.split("&"):
        if not field:
            continue
        name, _, value = field.partition("=")
        pairs.append((_unquote_plus(name), _unquote_plus(value)))
    return pairs


def _unquote_plus(text: str) -> str:
    if "+" in text:
        text = text.replace("+", " ")
    return unquote(text, errors="strict") if "%" in text else text


def _no_constant(name: str) -> Any:
    """NaN and Infinity are not JSON (Python accepts them; PostgreSQL's json type does not)."""
    raise ValueError(f"{name} is not valid JSON")


def _first_values(pairs: Any) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for key, value in pairs:
        data.setdefault(key, value)
    return data

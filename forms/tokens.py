"""The render-time token: when a form was put in front of someone, signed so it cannot be backdated.

Why: bots post a form the instant they load it; people take seconds. The snippet fetches a token when it
renders the forms (`GET /forms/token`) and sends it back as `ts_token`. A post whose token is younger than
`FORM_MIN_FILL_SECONDS`, older than `FORM_TOKEN_MAX_AGE_SECONDS` or badly signed is treated like the honeypot:
stored as spam, answered as a success. A post without a token is accepted: plain HTML forms on other sites
cannot carry one, so the token is a speed bump, not a lock. Stdlib `hmac` is all it needs.

Example:
    >>> token = issue(b"secret", now=1000.0)
    >>> check(token, b"secret", min_age=2, max_age=86400, now=1001.0)
    'too_fast'
    >>> check(token, b"secret", min_age=2, max_age=86400, now=1005.0)
    'ok'
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
import time
from collections.abc import Sequence
from typing import Literal

from starlette.requests import Request
from starlette.responses import JSONResponse

from leadsync.config import Settings

log = logging.getLogger(__name__)
Verdict = Literal["ok", "too_fast", "expired", "bad"]
VERSION = "v1"
# The only shape `issue` makes; checked first, so nothing later sees non-ASCII (`"١٢٣".isdigit()` is True in
# Python, and `.encode("ascii")` / `compare_digest` on such text raised: a 500 before).
_SHAPE = re.compile(r"v1\.([0-9]{1,15})\.([A-Za-z0-9_-]{43})")


def _signature(secret: bytes, payload: str) -> str:
    digest = hmac.new(secret, payload.encode("ascii"), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def issue(secret: bytes, now: float | None = None) -> str:
    """`v1.<unix milliseconds>.<HMAC-SHA256>`: milliseconds, because the minimum age is a few seconds."""
    stamp = int((time.time() if now is None else now) * 1000)
    payload = f"{VERSION}.{stamp}"
    return f"{payload}.{_signature(secret, payload)}"


def check(
    token: str, secret: bytes | Sequence[bytes], min_age: float, max_age: float, now: float | None = None
) -> Verdict:
    """Whether `token` was signed with `secret` (or one of several: rotation) between `max_age` and `min_age`
    seconds ago. Anything malformed is "bad", never an exception."""
    shape = _SHAPE.fullmatch(token) if isinstance(token, str) else None
    if shape is None:
        return "bad"
    stamp, signature = shape.groups()
    keys = [secret] if isinstance(secret, bytes) else list(secret)
    if not any([hmac.compare_digest(signature, _signature(key, f"{VERSION}.{stamp}")) for key in keys]):
        return "bad"
    age = (time.time() if now is None else now) - int(stamp) / 1000
    if age < min_age:
        return "too_fast"
    if age > max_age:
        return "expired"
    return "ok"


def looks_like_spam(token: str | None, settings: Settings) -> bool:
    """True for a token that is present and not `ok`; no token is fine (plain HTML forms have none)."""
    if not token:
        return False
    verdict = check(token, settings.signing_keys, settings.form_min_fill_seconds, settings.form_token_max_age_seconds)
    if verdict != "ok":
        log.info("form token %s: the post is stored as spam", verdict)
    return verdict != "ok"


async def token_endpoint(request: Request) -> JSONResponse:
    """`GET /forms/token`: a fresh token for the snippet; never cached, since its time is the point."""
    settings: Settings = request.app.state.settings
    return JSONResponse(
        {"token": issue(settings.signing_key), "max_age": settings.form_token_max_age_seconds},
        headers={"Cache-Control": "no-store"},
    )

"""Signed, expiring links in emails (confirm a subscription, unsubscribe): no database lookup to verify.

A token carries its purpose, the contact id, a short hash of the email (so a link stops working once
the person is forgotten or the address changes), an expiry and its issue time (milliseconds: a confirm
link issued before the person's latest unsubscribe no longer confirms), signed with HMAC-SHA256 under
FORM_TOKEN_SECRET. Verification accepts any of the keys (rotation: the current one signs, previous ones
still verify). Shared by the worker (which writes links into emails) and the HTTP edge (which checks them).

Anything that is not a well-formed token (non-ASCII, bad base64, bad JSON, wrong types) is BadToken,
never another exception: the edge turns BadToken into a 400 page.

Example:
    >>> token = sign(b"key", "unsubscribe", contact_id=7, email="ann@example.org", ttl=3600)
    >>> verify(token, [b"new-key", b"key"], "unsubscribe").contact_id
    7
    >>> verify("caf\u00e9.x", [b"key"], "unsubscribe")  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    leadsync.signing.BadToken: malformed
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass

# base64url without padding, a dot, base64url: the only shape `sign` makes. Checked before anything else,
# so every later step only ever sees ASCII. 2048 is far above a real token (~120 characters).
_SHAPE = re.compile(r"[A-Za-z0-9_-]{1,2048}\.[A-Za-z0-9_-]{43}")


class BadToken(ValueError):
    """The link is forged, for another purpose, malformed or expired."""


@dataclass(frozen=True)
class Claims:
    purpose: str
    contact_id: int
    email_hash: str
    expires: int
    issued_ms: int = 0  # tokens made before issue times existed count as issued at the epoch (the oldest)


def email_hash(email: str) -> str:
    """A stable, non-reversible stand-in for an address (links, logs)."""
    return hashlib.sha256(email.strip().lower().encode()).hexdigest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(key: bytes, payload: str) -> str:
    return _b64(hmac.new(key, payload.encode("ascii"), hashlib.sha256).digest())


def sign(key: bytes, purpose: str, contact_id: int, email: str, ttl: float, now: float | None = None) -> str:
    at = time.time() if now is None else now
    claims = [purpose, contact_id, email_hash(email)[:16], int(at + ttl), int(at * 1000)]
    payload = _b64(json.dumps(claims).encode())
    return f"{payload}.{_mac(key, payload)}"


def verify(token: str, keys: bytes | Sequence[bytes], purpose: str, now: float | None = None) -> Claims:
    """The token's claims when one of `keys` signed it, or BadToken."""
    if not isinstance(token, str) or not _SHAPE.fullmatch(token):
        raise BadToken("malformed")
    payload, _, mac = token.partition(".")
    candidates = [keys] if isinstance(keys, bytes) else list(keys)
    # Every key is tried (no early exit): the time taken does not tell which key, if any, matched.
    valid = [hmac.compare_digest(mac, _mac(key, payload)) for key in candidates]
    if not any(valid):
        raise BadToken("bad signature")
    claims = _parse(payload)
    if claims.purpose != purpose:
        raise BadToken("wrong purpose")
    if (time.time() if now is None else now) > claims.expires:
        raise BadToken("expired")
    return claims


def _parse(payload: str) -> Claims:
    """The claims of a correctly signed payload; strict about types even so (a leaked old key, a bug)."""
    try:
        data = json.loads(_unb64(payload))
    except (ValueError, binascii.Error) as error:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise BadToken("malformed") from error
    if not isinstance(data, list) or len(data) not in (4, 5):
        raise BadToken("malformed")
    got_purpose, contact_id, hashed, expires, *rest = data
    issued = rest[0] if rest else 0
    ints = (contact_id, expires, issued)
    if not isinstance(got_purpose, str) or not isinstance(hashed, str):
        raise BadToken("malformed")
    if not all(isinstance(value, int) and not isinstance(value, bool) for value in ints):
        raise BadToken("malformed")
    return Claims(got_purpose, contact_id, hashed, expires, issued)


def matches(claims: Claims, email: str) -> bool:
    return hmac.compare_digest(claims.email_hash.encode(), email_hash(email)[:16].encode())

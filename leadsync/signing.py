"""Signed, expiring links in emails (confirm a subscription, unsubscribe): no database lookup to verify.

A token carries its purpose, the contact id, a short hash of the email (so a link stops working once
the person is forgotten or the address changes) and an expiry, signed with HMAC-SHA256. Shared by the
worker (which writes links into emails) and the HTTP edge (which checks them).

Example:
    >>> token = sign(b"key", "unsubscribe", contact_id=7, email="ann@example.org", ttl=3600)
    >>> verify(token, b"key", "unsubscribe").contact_id
    7
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass


class BadToken(ValueError):
    """The link is forged, for another purpose, or expired."""


@dataclass(frozen=True)
class Claims:
    purpose: str
    contact_id: int
    email_hash: str
    expires: int


def email_hash(email: str) -> str:
    """A stable, non-reversible stand-in for an address (links, suppression entries, logs)."""
    return hashlib.sha256(email.strip().lower().encode()).hexdigest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(key: bytes, payload: str) -> str:
    return _b64(hmac.new(key, payload.encode("ascii"), hashlib.sha256).digest())


def sign(key: bytes, purpose: str, contact_id: int, email: str, ttl: float, now: float | None = None) -> str:
    expires = int((time.time() if now is None else now) + ttl)
    payload = _b64(json.dumps([purpose, contact_id, email_hash(email)[:16], expires]).encode())
    return f"{payload}.{_mac(key, payload)}"


def verify(token: str, key: bytes, purpose: str, now: float | None = None) -> Claims:
    """The token's claims, or BadToken."""
    payload, _, mac = token.partition(".")
    if not payload or not hmac.compare_digest(mac, _mac(key, payload)):
        raise BadToken("bad signature")
    try:
        got_purpose, contact_id, hashed, expires = json.loads(_unb64(payload))
    except (ValueError, TypeError) as error:
        raise BadToken("malformed") from error
    if got_purpose != purpose:
        raise BadToken("wrong purpose")
    if (time.time() if now is None else now) > expires:
        raise BadToken("expired")
    return Claims(got_purpose, int(contact_id), str(hashed), int(expires))


def matches(claims: Claims, email: str) -> bool:
    return hmac.compare_digest(claims.email_hash, email_hash(email)[:16])

"""The canonical mailbox of an address: every spelling that reaches the same inbox, as one key.

Why: caps and rate limits keyed on the typed string are bypassed with `victim+1@…`, `Victim@…` or, at Gmail,
`v.ictim@…`; all of them land in one inbox. The abuse rules count this key instead (the per-address rate limit
in forms/spam.py, the daily email cap per recipient in worker/intake.py). Contacts stay keyed by the address
as typed, lowercased: a person who types a +tag gets it back, and dedupe does not guess.

Rules, deliberately few and certain: lowercase; drop a `+tag` (RFC 5233 subaddress: Gmail, Outlook, Fastmail,
iCloud, Proton and most hosted mail deliver it to the base mailbox); at gmail.com and googlemail.com (the same
service) drop dots and use gmail.com. Other providers' dot rules are not guessed.

Example:
    >>> canonical_mailbox("V.Ictim+1@GoogleMail.com")
    'victim@gmail.com'
    >>> canonical_mailbox("Ann.Lee+news@Example.org")
    'ann.lee@example.org'
"""

from __future__ import annotations

import hashlib
import hmac

GMAIL_DOMAINS = frozenset({"gmail.com", "googlemail.com"})


def canonical_mailbox(email: str) -> str:
    """`email` lowercased, without its +tag, without dots at Gmail (googlemail.com becomes gmail.com)."""
    local, at, domain = email.strip().lower().rpartition("@")
    if not at:
        return email.strip().lower()
    domain = domain.rstrip(".")
    local = local.split("+", 1)[0] or local  # "+only@x" keeps its local part rather than becoming empty
    if domain in GMAIL_DOMAINS:
        local, domain = local.replace(".", "") or local, "gmail.com"
    return f"{local}@{domain}"


def mailbox_key(email: str, key: bytes) -> str:
    """A keyed, non-reversible stand-in for the canonical mailbox (rate-limit keys, the email_sends column):
    nobody holding the database or Redis can test an address against it without the secret."""
    digest = hmac.new(key, b"mailbox|" + canonical_mailbox(email).encode(), hashlib.sha256).hexdigest()
    return digest[:32]

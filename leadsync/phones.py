"""Phone numbers: the shape a form accepts, and E.164 for the contact.

The form only checks the shape (forms/schemas.py): digits of any script, spaces, + ( ) - . / and an optional
extension. The worker turns the number into E.164 when it merges the submission into its contact
(worker/intake.py), off the request path: phonenumbers' parse and validity check cost ~90 µs a post, about
8% of a post's CPU in the web's profile (docs/benchmarks.md), and never decide a 4xx (a number the
numbering plan does not know is kept as typed).

Example:
    >>> to_e164("(212) 555-0123")
    '+12125550123'
    >>> to_e164("555-0100")          # shaped like a number, unknown to the numbering plan: kept as typed
    '555-0100'
"""

from __future__ import annotations

import re

import phonenumbers

# Digits (any script: phonenumbers reads them all), spaces, + ( ) - . / and an optional extension.
PHONE_SHAPE = re.compile(r"\+?[\d\s().\-/]*\d[\d\s().\-/]*(?:\s*(?:ext\.?|x|#)\s*\d{1,6})?", re.IGNORECASE)


def phone_shaped(value: str) -> bool:
    """Whether `value` looks like a phone number (what a form accepts; anything else gets a field message)."""
    return PHONE_SHAPE.fullmatch(value) is not None


def as_typed(value: str) -> str:
    """The number as typed, its runs of spaces made one (what the form stores)."""
    return " ".join(value.split())


def to_e164(value: str, region: str = "US") -> str:
    """E.164 (`+12125550123`, `+12125550123 ext. 12`) when phonenumbers knows the number; else as typed.

    Why keep an unknown number: people type local numbers without an area code or numbers newer than the
    metadata, and the clinic would rather call than lose the lead. `region` reads numbers typed without +.
    """
    try:
        number = phonenumbers.parse(value, region.upper())
    except phonenumbers.NumberParseException:
        return as_typed(value)
    if not phonenumbers.is_valid_number(number):
        return as_typed(value)
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    return f"{e164} ext. {number.extension}" if number.extension else e164

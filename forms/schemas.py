"""The two forms' fields, their limits and their error messages.

Example:
    >>> form, errors = validate("info-packet", {"email": " Ann@Example.ORG ", "first_name": "Ann"})
    >>> form.email, errors
    ('ann@example.org', {})
"""

from __future__ import annotations

import re
import unicodedata
from typing import Annotated, Any, Literal

import phonenumbers
from email_validator import EmailNotValidError, validate_email
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidationInfo,
)

from leadsync.kinds import FormKind

MESSAGES = {
    "newsletter": "You have Successfully Subscribed!",
    "info-packet": "Thanks for your interest!",
}
FORM_KEYS = {"newsletter": FormKind.NEWSLETTER, "info-packet": FormKind.INFO_PACKET}  # URL name -> stored form


CONTROL_MESSAGE = "Remove control characters (such as line breaks or tabs) from this field."
PHONE_MESSAGE = "Enter a phone number: digits, spaces and + ( ) - . / only."
NAME_MESSAGE = "Enter just your name: no web addresses, email addresses or < >."
# Bidirectional overrides reorder how text is shown (a name that reads differently in the CRM): never needed in
# a form field. Zero-width joiners stay: some scripts and emoji need them.
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
# Digits (any script: phonenumbers reads them all), spaces, + ( ) - . / and an optional extension.
_PHONE_SHAPE = re.compile(r"\+?[\d\s().\-/]*\d[\d\s().\-/]*(?:\s*(?:ext\.?|x|#)\s*\d{1,6})?", re.IGNORECASE)


# What a name never holds but a phishing text does: a URL scheme or "www.", an address, markup, a domain
# followed by a path ("evil.example/claim"), or a token ending in a top-level domain spammers use. A plain
# dotted name ("St.Clair", "J.R.R.") passes: "clair" is no TLD here, and single letters never are.
_SPAMMY_TLDS = (
    "com|net|org|info|biz|io|co|me|ru|cn|su|xyz|top|site|online|club|shop|store|app|link|click|live|vip|win|"
    "work|tk|ml|ga|cf|gq|ly|to|cc|us|uk|de|fr|eu|in|example|test|invalid|local|onion"
)
_NOT_A_NAME = re.compile(
    r"[<>@]|://|\bwww\.|[\w-]+(?:\.[\w-]+)+/|(?:^|[^\w.])[\w-]+(?:\.[\w-]+)*\.(?:" + _SPAMMY_TLDS + r")(?![\w-])",
    re.IGNORECASE,
)


def person_name(value: str | None) -> str | None:
    """A first or last name, or ValueError: a name with a link, an address or markup would carry a phishing
    text into the CRM and, from there, into any email that greets the person by name."""
    if value is not None and _NOT_A_NAME.search(value):
        raise ValueError(NAME_MESSAGE)
    return value


def normalize_email(value: str) -> str:
    """The dedupe key: syntax-checked, trimmed, lowercased. No guessing beyond that (dots, +tags stay)."""
    try:
        result = validate_email(value.strip(), check_deliverability=False)
    except (EmailNotValidError, UnicodeError) as error:
        raise ValueError("Enter a valid email address.") from error
    return result.normalized.lower()


def clean_text(value: str, multiline: bool = False, form: Literal["NFC", "NFKC"] = "NFKC") -> str:
    """Unicode-normalized text without control characters, or ValueError with the field message.

    Why: nothing a visitor types may reach an email header or a CRM field as a line break, a NUL (which
    PostgreSQL refuses: a 500), a lone surrogate or a bidi override. NFKC folds look-alikes (fullwidth
    letters, ligatures) in single-line fields; free text keeps NFC so it reads as typed. `multiline` allows
    line breaks and tabs and turns CR LF and CR into LF.
    """
    if multiline:
        value = value.replace("\r\n", "\n").replace("\r", "\n")
    for char in value:
        category = unicodedata.category(char)
        if multiline and char in "\n\t":
            continue
        if category in ("Cc", "Cs", "Zl", "Zp") or char in _BIDI_CONTROLS:
            raise ValueError(CONTROL_MESSAGE)
    return unicodedata.normalize(form, value)


def _blank_to_none(value: Any) -> Any:
    if isinstance(value, str):
        value = value.strip()
        return value or None
    return value


def _line(value: Any) -> Any:
    """Blank means absent; text is cleaned as one line (see `clean_text`)."""
    value = _blank_to_none(value)
    return _blank_to_none(clean_text(value)) if isinstance(value, str) else value


def _paragraphs(value: Any) -> Any:
    value = _blank_to_none(value)
    return _blank_to_none(clean_text(value, multiline=True, form="NFC")) if isinstance(value, str) else value


# Documented in the OpenAPI document (and used by the API fuzz to generate acceptable values).
ONE_LINE_PATTERN = "^[^\\u0000-\\u001f\\u007f\\u2028\\u2029\\u202a-\\u202e\\u2066-\\u2069]*$"


def _text(max_length: int) -> Any:
    """An optional one-line text field: blank means absent."""
    line = Annotated[
        str, StringConstraints(max_length=max_length), Field(json_schema_extra={"pattern": ONE_LINE_PATTERN})
    ]
    return Annotated[line | None, BeforeValidator(_line)]


def normalize_phone(value: str | None, region: str = "US") -> str | None:
    """E.164 (`+12125550123`) when phonenumbers knows the number; otherwise the digits as typed.

    Why keep an unknown number: people type local numbers without an area code or numbers newer than the
    metadata, and the clinic would rather call than lose the lead. Anything not shaped like a phone number
    (letters, markup) is refused with a field message.
    """
    if value is None:
        return None
    if not _PHONE_SHAPE.fullmatch(value):
        raise ValueError(PHONE_MESSAGE)
    try:
        number = phonenumbers.parse(value, region.upper())
    except phonenumbers.NumberParseException:
        return " ".join(value.split())
    if not phonenumbers.is_valid_number(number):
        return " ".join(value.split())
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    return f"{e164} ext. {number.extension}" if number.extension else e164


def _phone(value: str | None, info: ValidationInfo) -> str | None:
    region = (info.context or {}).get("phone_region", "US")
    return normalize_phone(value, region)


def _page_url(value: str | None) -> str | None:
    """Only web addresses: a `javascript:` URL must never become a link in the CRM."""
    if value is not None and not value.lower().startswith(("http://", "https://")):
        raise ValueError("Must be a web address (http or https).")
    return value


def _honeypot(value: Any) -> str | None:
    """Anything in the honeypot makes the post spam; never a validation error (that would teach the bot)."""
    if value is None or value is False:
        return None
    text = str(value).strip()
    return "filled" if text else None


def _email_text(value: Any) -> Any:
    value = _blank_to_none(value)
    if isinstance(value, str):
        clean_text(value)  # a control character is a field message, never an odd email_validator error
    return value


Email = Annotated[
    str,
    BeforeValidator(_email_text),
    Field(max_length=254, json_schema_extra={"format": "email"}),
    AfterValidator(normalize_email),
]
Name = Annotated[
    str,
    BeforeValidator(_line),
    Field(min_length=1, max_length=100, json_schema_extra={"pattern": ONE_LINE_PATTERN}),
    AfterValidator(person_name),
]
OptionalName = Annotated[_text(100), AfterValidator(person_name)]


class MetaFields(BaseModel):
    """Fields every form carries: where the visitor came from, and the honeypot."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    page_url: Annotated[_text(2048), AfterValidator(_page_url)] = None
    page_title: _text(300) = None  # the article's title, for the note sales read in HubSpot
    utm_source: _text(255) = None
    utm_medium: _text(255) = None
    utm_campaign: _text(255) = None
    utm_term: _text(255) = None
    utm_content: _text(255) = None
    hutk: _text(128) = None
    # The signed render-time token (forms/tokens.py); optional because plain HTML forms cannot carry one.
    ts_token: _text(200) = None
    # Honeypot: hidden from people, filled by bots. Non-empty means spam, not a validation error.
    website: Annotated[str | None, BeforeValidator(_honeypot)] = None

    def utm(self) -> dict[str, str]:
        names = ("utm_source", "utm_medium", "utm_campaign", "utm_term", "utm_content")
        return {name: value for name in names if (value := getattr(self, name))}


class NewsletterForm(MetaFields):
    """ "Subscribe To Our Newsletter"."""

    email: Email
    first_name: OptionalName = None


class InfoPacketForm(MetaFields):
    """ "Request Information Packet"."""

    email: Email
    first_name: Name
    last_name: OptionalName = None
    phone: Annotated[_text(40), AfterValidator(_phone)] = None
    interest: _text(200) = None
    message: Annotated[Annotated[str, StringConstraints(max_length=5000)] | None, BeforeValidator(_paragraphs)] = None
    newsletter_opt_in: Annotated[bool, BeforeValidator(lambda v: False if v in (None, "") else v)] = False


FormName = Literal["newsletter", "info-packet"]
SCHEMAS: dict[str, type[MetaFields]] = {"newsletter": NewsletterForm, "info-packet": InfoPacketForm}


def validate(form: str, data: dict[str, Any], phone_region: str = "US") -> tuple[MetaFields | None, dict[str, str]]:
    """Validate `data` for `form`: the parsed form, or field -> human message."""
    try:
        return SCHEMAS[form].model_validate(data, context={"phone_region": phone_region}), {}
    except ValidationError as error:
        return None, field_errors(error)


def field_errors(error: ValidationError) -> dict[str, str]:
    """One readable message per field, in the order of the form."""
    errors: dict[str, str] = {}
    for item in error.errors(include_url=False):
        name = str(item["loc"][0]) if item["loc"] else "body"
        errors.setdefault(name, _message(item))
    return errors


def _message(item: Any) -> str:
    kind, ctx = item["type"], item.get("ctx") or {}
    if kind in ("missing", "string_too_short") or (kind == "string_type" and item.get("input") is None):
        return "This field is required."
    if kind in ("string_too_long", "too_long"):
        return f"Must be at most {ctx.get('max_length')} characters."
    if kind == "string_type":
        return "Must be text."
    if kind.startswith("bool"):
        return "Must be true or false."
    if kind == "value_error":
        return str(ctx.get("error", item["msg"]))
    return str(item["msg"])

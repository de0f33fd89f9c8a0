"""The two forms' fields, their limits and their error messages.

Example:
    >>> form, errors = validate("info-packet", {"email": " Ann@Example.ORG ", "first_name": "Ann"})
    >>> form.email, errors
    ('ann@example.org', {})
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache
from typing import Annotated, Any, Literal

from email_validator import EmailNotValidError, validate_email
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
)

from leadsync.kinds import FormKind
from leadsync.phones import as_typed, phone_shaped

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
# What clean_text refuses, as one character class: Unicode's Cc (C0, DEL, C1: fixed by its stability policy),
# Cs (surrogates), Zl, Zp, and the bidi controls. One regex search instead of a category lookup a character
# (tests/security/test_validator_properties.py checks it against unicodedata for every code point).
_REFUSED = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_REFUSED_MULTILINE = re.compile(  # the same, but tab and line feed
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff\u2028\u2029\u202a-\u202e\u2066-\u2069]"
)


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


# The everyday address: an ASCII dot-atom mailbox at a host name (RFC 5322's atext, as email_validator reads it).
# Its mailbox part needs no check beyond this pattern, so only the domain goes to email_validator, once per
# domain (cached): the full call costs ~60 µs a post, and a few domains (gmail.com, yahoo.com...) are most
# visitors'. Anything else (quotes, Unicode, a domain literal, 254+ characters) takes the full path.
# tests/security/test_validator_properties.py holds both paths to the same answers.
_ATEXT = r"[A-Za-z0-9_!#$%&'*+\-/=?^`{|}~]+"
_PLAIN_ADDRESS = re.compile(rf"({_ATEXT}(?:\.{_ATEXT})*)@([A-Za-z0-9.\-]+)")
_EMAIL_MAX_LENGTH = 254  # RFC 5321's path limit, which email_validator enforces


def normalize_email(value: str) -> str:
    """The dedupe key: syntax-checked, trimmed, lowercased. No guessing beyond that (dots, +tags stay)."""
    value = value.strip()
    plain = _PLAIN_ADDRESS.fullmatch(value)
    if plain is not None and len(value) <= _EMAIL_MAX_LENGTH:
        domain = _domain(plain[2])
        if domain is None:
            raise ValueError("Enter a valid email address.")
        return f"{plain[1]}@{domain}".lower()
    try:
        result = validate_email(value, check_deliverability=False)
    except (EmailNotValidError, UnicodeError) as error:
        raise ValueError("Enter a valid email address.") from error
    return result.normalized.lower()


@lru_cache(maxsize=1024)
def _domain(domain: str) -> str | None:
    """email_validator's reading of a domain (None: refused), asked with a mailbox that always passes."""
    try:
        return validate_email(f"a@{domain}", check_deliverability=False).domain
    except (EmailNotValidError, UnicodeError):
        return None


def clean_text(value: str, multiline: bool = False, form: Literal["NFC", "NFKC"] = "NFKC") -> str:
    """Unicode-normalized text without control characters, or ValueError with the field message.

    Why: nothing a visitor types may reach an email header or a CRM field as a line break, a NUL (which
    PostgreSQL refuses: a 500), a lone surrogate or a bidi override. NFKC folds look-alikes (fullwidth
    letters, ligatures) in single-line fields; free text keeps NFC so it reads as typed. `multiline` allows
    line breaks and tabs and turns CR LF and CR into LF.
    """
    if multiline:
        value = value.replace("\r\n", "\n").replace("\r", "\n")
    if (_REFUSED_MULTILINE if multiline else _REFUSED).search(value):
        raise ValueError(CONTROL_MESSAGE)
    if value.isascii():  # NFC and NFKC leave ASCII as it is
        return value
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


def phone_number(value: str | None) -> str | None:
    """A phone number as typed (spaces collapsed), or ValueError when it is not shaped like one (letters,
    markup). E.164 comes later, in the worker (leadsync/phones.py): it never decides a 4xx."""
    if value is None:
        return None
    if not phone_shaped(value):
        raise ValueError(PHONE_MESSAGE)
    return as_typed(value)


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
    phone: Annotated[_text(40), AfterValidator(phone_number)] = None
    interest: _text(200) = None
    message: Annotated[Annotated[str, StringConstraints(max_length=5000)] | None, BeforeValidator(_paragraphs)] = None
    newsletter_opt_in: Annotated[bool, BeforeValidator(lambda v: False if v in (None, "") else v)] = False


FormName = Literal["newsletter", "info-packet"]
SCHEMAS: dict[str, type[MetaFields]] = {"newsletter": NewsletterForm, "info-packet": InfoPacketForm}


def validate(form: str, data: dict[str, Any]) -> tuple[MetaFields | None, dict[str, str]]:
    """Validate `data` for `form`: the parsed form, or field -> human message."""
    try:
        return SCHEMAS[form].model_validate(data), {}
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

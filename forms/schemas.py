"""The two forms' fields, their limits and their error messages.

Example:
    >>> form, errors = validate("info-packet", {"email": " Ann@Example.ORG ", "first_name": "Ann"})
    >>> form.email, errors
    ('ann@example.org', {})
"""

from __future__ import annotations

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

MESSAGES = {
    "newsletter": "You have Successfully Subscribed!",
    "info-packet": "Thanks for your interest!",
}
FORM_KEYS = {"newsletter": "newsletter", "info-packet": "info_packet"}


def normalize_email(value: str) -> str:
    """The dedupe key: syntax-checked, trimmed, lowercased. No guessing beyond that (dots, +tags stay)."""
    try:
        result = validate_email(value.strip(), check_deliverability=False)
    except EmailNotValidError as error:
        raise ValueError("Enter a valid email address.") from error
    return result.normalized.lower()


def _blank_to_none(value: Any) -> Any:
    if isinstance(value, str):
        value = value.strip()
        return value or None
    return value


def _text(max_length: int) -> Any:
    """An optional text field: blank means absent."""
    return Annotated[Annotated[str, StringConstraints(max_length=max_length)] | None, BeforeValidator(_blank_to_none)]


Email = Annotated[str, BeforeValidator(_blank_to_none), Field(max_length=254), AfterValidator(normalize_email)]
Name = Annotated[str, BeforeValidator(_blank_to_none), Field(min_length=1, max_length=100)]


class MetaFields(BaseModel):
    """Fields every form carries: where the visitor came from, and the honeypot."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    page_url: _text(2048) = None
    utm_source: _text(255) = None
    utm_medium: _text(255) = None
    utm_campaign: _text(255) = None
    utm_term: _text(255) = None
    utm_content: _text(255) = None
    hutk: _text(128) = None
    # The signed render-time token (forms/tokens.py); optional because plain HTML forms cannot carry one.
    ts_token: _text(200) = None
    # Honeypot: hidden from people, filled by bots. Non-empty means spam, not a validation error.
    website: Annotated[str | None, BeforeValidator(_blank_to_none)] = None

    def utm(self) -> dict[str, str]:
        names = ("utm_source", "utm_medium", "utm_campaign", "utm_term", "utm_content")
        return {name: value for name in names if (value := getattr(self, name))}


class NewsletterForm(MetaFields):
    """ "Subscribe To Our Newsletter"."""

    email: Email
    first_name: _text(100) = None


class InfoPacketForm(MetaFields):
    """ "Request Information Packet"."""

    email: Email
    first_name: Name
    last_name: _text(100) = None
    phone: _text(40) = None
    interest: _text(200) = None
    message: _text(5000) = None
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

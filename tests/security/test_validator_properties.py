"""Property-based tests (hypothesis) of the validators: whatever a visitor types, validation either refuses
it with field messages or returns values that are normalized, within their limits and header-safe."""

from __future__ import annotations

import re
import unicodedata

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from leadsync.forms.schemas import InfoPacketForm, clean_text, normalize_email, normalize_phone, validate

FIELDS = ("email", "first_name", "last_name", "phone", "interest", "message", "page_url", "utm_source", "hutk")
LIMITS = {"first_name": 100, "last_name": 100, "phone": 40, "interest": 200, "message": 5000, "utm_source": 255}
SETTINGS = settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
anything = st.one_of(st.text(), st.text(alphabet=st.characters(codec="utf-8")), st.integers(), st.booleans())
forms = st.dictionaries(st.sampled_from(FIELDS), anything, max_size=len(FIELDS))


def header_safe(text: str) -> bool:
    return not any(unicodedata.category(char) in ("Cc", "Cs", "Zl", "Zp") for char in text)


@SETTINGS
@given(data=forms, form=st.sampled_from(["newsletter", "info-packet"]))
def test_validation_never_raises_and_accepted_values_are_clean(data: dict, form: str) -> None:
    parsed, errors = validate(form, {"email": "ann@example.org", "first_name": "Ann", **data})
    assert (parsed is None) == bool(errors)
    assert all(isinstance(message, str) and message for message in errors.values())
    if parsed is None:
        return
    for name, value in parsed.model_dump(exclude_none=True).items():
        if not isinstance(value, str):
            continue
        assert len(value) <= LIMITS.get(name, 2048)
        if name == "message":
            assert header_safe(value.replace("\n", "").replace("\t", ""))
            assert value == unicodedata.normalize("NFC", value)
        else:
            assert header_safe(value), (name, value)
            assert value == value.strip()


@SETTINGS
@given(st.text())
def test_clean_text_is_idempotent_or_refuses(text: str) -> None:
    try:
        once = clean_text(text)
    except ValueError:
        return
    assert clean_text(once) == once and header_safe(once)


@SETTINGS
@given(st.emails())
def test_normalized_emails_are_stable_lowercase_and_header_safe(email: str) -> None:
    try:
        normalized = normalize_email(email)
    except ValueError:
        return
    assert normalize_email(normalized) == normalized == normalized.lower()
    assert header_safe(normalized) and " " not in normalized


@SETTINGS
@given(st.from_regex(r"\+?[0-9 ().\-]{1,30}", fullmatch=True))
def test_phone_numbers_become_e164_or_stay_as_typed_never_anything_else(typed: str) -> None:
    try:
        stored = normalize_phone(typed.strip() or None)
    except ValueError:
        return
    if stored is None:
        return
    assert re.fullmatch(r"\+[1-9]\d{6,14}", stored) or stored == " ".join(typed.split())
    assert normalize_phone(stored) == stored or not stored.startswith("+")  # E.164 is a fixed point


def test_the_model_documents_its_limits() -> None:
    schema = InfoPacketForm.model_json_schema()
    assert schema["properties"]["email"]["format"] == "email"

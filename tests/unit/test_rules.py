"""The pure rules: email normalization, field validation, merging, the packet window, CRM mapping."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest

from leadsync.config import Settings
from leadsync.config.settings import CONFIG_DIR, MissingSecret
from leadsync.forms.schemas import normalize_email, validate
from leadsync.mailbox import canonical_mailbox, mailbox_key
from leadsync.worker.crm.mapping import contact_properties, format_value, load_mapping
from leadsync.worker.email_decisions import packet_due
from leadsync.worker.merge import later_stage, merge_fields, submission_values

JAN1 = datetime(2026, 1, 1, tzinfo=UTC)
JAN2 = datetime(2026, 1, 2, tzinfo=UTC)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("  Ann@Example.ORG ", "ann@example.org"),
        ("ANN.SMITH+clinic@Example.org", "ann.smith+clinic@example.org"),  # no guessing: dots and tags stay
        ("ann@example.org", "ann@example.org"),
    ],
)
def test_normalize_email_trims_and_lowercases_only(raw: str, expected: str) -> None:
    assert normalize_email(raw) == expected


@pytest.mark.parametrize("bad", ["", "ann", "ann@", "@example.org", "ann@@example.org", "ann example@x.org"])
def test_normalize_email_refuses_bad_syntax(bad: str) -> None:
    with pytest.raises(ValueError, match="valid email"):
        normalize_email(bad)


def test_info_packet_requires_email_and_first_name() -> None:
    form, errors = validate("info-packet", {})
    assert form is None
    assert errors == {"email": "This field is required.", "first_name": "This field is required."}


def test_field_messages_name_each_bad_field() -> None:
    _, errors = validate(
        "info-packet",
        {"email": "not-an-email", "first_name": " ", "phone": "1" * 41, "newsletter_opt_in": "perhaps", "interest": 5},
    )
    assert errors == {
        "email": "Enter a valid email address.",
        "first_name": "This field is required.",
        "phone": "Must be at most 40 characters.",
        "newsletter_opt_in": "Must be true or false.",
        "interest": "Must be text.",
    }


def test_newsletter_needs_only_email_and_blank_optional_fields_are_absent() -> None:
    form, errors = validate("newsletter", {"email": "Bo@Example.org", "first_name": " ", "utm_source": ""})
    assert errors == {}
    assert form is not None
    assert (form.email, form.first_name, form.utm()) == ("bo@example.org", None, {})


def test_checkbox_values_from_html_forms_parse_as_booleans() -> None:
    form, _ = validate("info-packet", {"email": "a@example.org", "first_name": "A", "newsletter_opt_in": "on"})
    assert form is not None and form.newsletter_opt_in is True  # type: ignore[attr-defined]


def test_newer_non_empty_values_win() -> None:
    merge = merge_fields({"phone": "111", "last_name": "Old"}, {}, {"phone": "222", "last_name": None}, JAN1)
    assert merge.changes == {"phone": "222"}
    assert merge.times == {"phone": JAN1.isoformat()}


def test_an_older_submission_processed_late_does_not_overwrite() -> None:
    times = {"phone": JAN2.isoformat()}
    merge = merge_fields({"phone": "new", "interest": None}, times, {"phone": "old", "interest": "exosomes"}, JAN1)
    assert merge.changes == {"interest": "exosomes"}  # fills the empty field, leaves the newer phone
    assert merge.times["phone"] == JAN2.isoformat()


def test_lifecycle_stage_never_moves_backwards() -> None:
    assert later_stage("subscriber", "lead") == "lead"
    assert later_stage("customer", "lead") == "customer"
    assert later_stage(None, "subscriber") == "subscriber"


def test_packet_window() -> None:
    window = timedelta(days=30)
    assert packet_due(None, JAN1, window)
    assert not packet_due(JAN1, JAN1 + timedelta(days=29), window)
    assert packet_due(JAN1, JAN1 + timedelta(days=30), window)


def test_newsletter_submissions_never_carry_a_message() -> None:
    values = submission_values("newsletter", {"message": "x", "first_name": "A"}, "https://c.example/a", {})
    assert values["message"] is None
    assert values["first_name"] == "A" and values["page_url"] == "https://c.example/a"


def test_mapping_keeps_the_free_text_message_out_of_hubspot() -> None:
    mapping = load_mapping(CONFIG_DIR / "hubspot_mapping.toml")
    contact = SimpleNamespace(
        email="ann@example.org",
        first_name="Ann",
        last_name=None,
        phone="+1 555 0100",
        lifecycle_stage="lead",
        interest="knees",
        message="my knee hurts since 2019",
        newsletter_status="subscribed",
        packet_requested_at=JAN1,
        page_url=None,
        utm_source="newsletter",
        utm_medium=None,
        utm_campaign=None,
        utm_term=None,
        utm_content=None,
    )
    properties = contact_properties(contact, mapping)
    assert properties == {
        "email": "ann@example.org",
        "firstname": "Ann",
        "phone": "+1 555 0100",
        "lifecyclestage": "lead",
        "leadsync_interest": "knees",
        "leadsync_newsletter_status": "subscribed",
        "leadsync_packet_requested_at": "2026-01-01T00:00:00.000Z",
        "leadsync_utm_source": "newsletter",
    }
    assert "leadsync_message" not in {spec.hubspot for spec in mapping.custom}


def test_format_value() -> None:
    assert format_value(None) is None and format_value("") is None
    assert format_value(True) == "true"
    assert format_value(datetime(2026, 3, 4, 5, 6, 7, 890000, tzinfo=UTC)) == "2026-03-04T05:06:07.890Z"


@pytest.mark.parametrize(
    ("typed", "mailbox"),
    [
        ("victim+1@example.org", "victim@example.org"),
        ("VICTIM@Example.ORG", "victim@example.org"),
        ("vic.tim+x@example.org", "vic.tim@example.org"),  # dots count except at Gmail
        ("v.i.c.t.i.m+2@gmail.com", "victim@gmail.com"),
        ("Vic.Tim@GoogleMail.com", "victim@gmail.com"),  # one service, two domains
        ("+only@example.org", "+only@example.org"),  # no base to fold to: kept whole
    ],
)
def test_canonical_mailbox_folds_every_spelling_of_one_inbox(typed: str, mailbox: str) -> None:
    assert canonical_mailbox(typed) == mailbox
    assert mailbox_key(typed, b"k") == mailbox_key(mailbox, b"k") != mailbox_key(mailbox, b"other key")


def test_signing_keys_come_only_from_the_secret(tmp_path: Path) -> None:
    with pytest.raises(MissingSecret):
        _ = Settings(_env_file=None, var_dir=tmp_path, database_url="sqlite:///public.db").signing_key
    rotated = Settings(_env_file=None, form_token_secret="new", form_token_secret_previous="old1, old2,new")
    assert rotated.signing_keys == [b"new", b"old1", b"old2"] and rotated.signing_key == b"new"
    dev = Settings(_env_file=None, var_dir=tmp_path, dev_mode=True)
    assert dev.signing_key == Settings(_env_file=None, var_dir=tmp_path, dev_mode=True).signing_key  # kept once
    assert (tmp_path / "form-token-secret").stat().st_mode & 0o777 == 0o600


def test_forwarded_allow_ips_takes_addresses_and_networks_and_refuses_a_typo() -> None:
    trusted = Settings(_env_file=None, forwarded_allow_ips=" 172.28.0.0/16, 127.0.0.1 ")
    assert trusted.forwarded_allow_ips == "172.28.0.0/16,127.0.0.1"
    with pytest.raises(ValueError, match=r"proxy\.internal"):
        Settings(_env_file=None, forwarded_allow_ips="proxy.internal")  # uvicorn matches addresses, not names

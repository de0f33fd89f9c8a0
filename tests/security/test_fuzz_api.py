"""A schema-driven fuzz of the HTTP API from its own OpenAPI document (schemathesis), in-process against the
ASGI app on SQLite: valid and invalid bodies in every documented encoding (JSON, urlencoded, multipart),
with and without the Idempotency-Key header. Not one answer may be a 5xx.

The schema's "valid" cases are mostly refused by rules it cannot express (page_url must be a web address, no
control characters), so a second fuzz generates leads valid by the app's own rules (any script's letters,
many address shapes, both encodings) and checks that every one of at least 1,000 is answered 202 and stored
as a real lead: rate limits are off in both, so no valid case is quietly turned into spam.

Deterministic (hypothesis derandomized, no example database); the case counts are printed and checked."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from sqlalchemy import func, select
from starlette.testclient import TestClient

from leadsync.config import Settings
from leadsync.forms.app import create_app
from leadsync.storage.db import session_scope
from leadsync.storage.migrate import upgrade
from leadsync.storage.models import Submission
from tests.conftest import apply_settings
from tests.support.stack import TEST_SECRET

# (operation, mode) -> examples: 2 forms x (450 valid + 300 invalid) + 2 health checks x 25 = 1,550 cases.
EXAMPLES = {("post", GenerationMode.POSITIVE): 450, ("post", GenerationMode.NEGATIVE): 300, ("get", None): 25}
MINIMUM_CASES = 1000


def _in_process_app_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Settings:
    """SQLite + filesystem broker in tmp_path, migrated. Limits off: on, they soon turn later valid cases into
    spam, a 202 that proves little (the limiter under load is tested in test_bots_real_stack.py)."""
    var = tmp_path / "var"
    configured = apply_settings(
        monkeypatch,
        {
            "VAR_DIR": str(var),
            "DATABASE_URL": f"sqlite:///{var / 'leadsync.db'}",
            "BROKER_URL": "filesystem://",
            "HUBSPOT_ACCESS_TOKEN": "",
            "SMTP_HOST": "",
            "FORM_TOKEN_SECRET": TEST_SECRET,
            "RATE_LIMIT_PER_IP": "",
            "RATE_LIMIT_PER_EMAIL": "",
        },
    )
    upgrade()
    return configured


def test_schemathesis_fuzz_finds_no_server_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    app = create_app(_in_process_app_settings(monkeypatch, tmp_path))
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    counts: Counter[str] = Counter()
    statuses: Counter[int] = Counter()

    for result in schema.get_all_operations():
        operation = result.ok()
        modes = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE] if operation.method == "post" else [None]
        for mode in modes:
            strategy = operation.as_strategy(generation_mode=mode or GenerationMode.POSITIVE)
            examples = EXAMPLES[(operation.method, mode)]

            @given(case=strategy)
            @settings(
                max_examples=examples,
                deadline=None,
                derandomize=True,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            def run(case: schemathesis.Case) -> None:
                response = case.call()
                counts[f"{case.method.upper()} {case.path}"] += 1
                statuses[response.status_code] += 1
                assert response.status_code < 500, (response.status_code, response.text[:500], case.body)
                case.validate_response(response, checks=[not_a_server_error])

            run()

    total = sum(counts.values())
    spam = spam_by_reason()
    print(f"\nschemathesis fuzz: {total} cases, 0 server errors; {dict(counts)}; statuses {dict(statuses)}; {spam=}")
    assert total >= MINIMUM_CASES
    assert not any(status >= 500 for status in statuses)
    assert not {"ip_rate", "email_rate"} & set(spam)  # spam only for what the cases said, never for a limit


def spam_by_reason() -> dict[str, int]:
    with session_scope() as session:
        rows = session.execute(
            select(Submission.spam_reason, func.count())
            .where(Submission.spam_reason.is_not(None))
            .group_by(Submission.spam_reason)
        )
        return {reason: n for reason, n in rows}


VALID_CASES = 1000
DOMAINS = ("example.org", "example.com", "example.net", "mail.example.org", "xn--bcher-kva.example.com")
LETTERS = st.characters(categories=("L",))  # letters of every script
valid_leads = st.fixed_dictionaries(
    {
        "email": st.builds(
            lambda local, domain, upper: (local.upper() if upper else local) + "@" + domain,
            st.from_regex(r"[a-z0-9](?:[a-z0-9_+-]|\.(?=[a-z0-9])){0,30}", fullmatch=True),
            st.sampled_from(DOMAINS),
            st.booleans(),
        ),
        "first_name": st.text(LETTERS, min_size=1, max_size=40),
    },
    optional={
        "last_name": st.text(LETTERS, max_size=40),
        "utm_source": st.text(LETTERS, max_size=30),
        "page_url": st.builds(lambda path: f"https://clinic.example.org/{path}", st.text("abc/-_", max_size=20)),
        "message": st.text(st.characters(categories=("L", "N", "P", "Zs")), max_size=300),
    },
)


def test_1000_valid_leads_are_each_answered_202_and_stored_as_real_leads(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    configured = _in_process_app_settings(monkeypatch, tmp_path)
    answered: list[str] = []
    with TestClient(create_app(configured)) as client:

        @given(lead=valid_leads, form=st.sampled_from(["info-packet", "newsletter"]), as_json=st.booleans())
        @settings(
            max_examples=VALID_CASES,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def post(lead: dict[str, str], form: str, as_json: bool) -> None:
            sent = client.post(f"/forms/{form}", json=lead) if as_json else client.post(f"/forms/{form}", data=lead)
            assert sent.status_code == 202, (lead, sent.text)
            answered.append(sent.json()["id"])

        post()

    with session_scope() as session:
        stored = dict(session.execute(select(Submission.id, Submission.status)).all())
    print(f"\nvalid-lead fuzz: {len(answered)} cases, every one 202 and stored pending")
    assert len(answered) >= VALID_CASES
    assert stored == dict.fromkeys(answered, "pending")  # each a real lead: none spam, none lost, none extra

"""/metrics and `leadsync status` in one process, on both backends: the same numbers, moving with the work."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr
from starlette.testclient import TestClient

from leadsync.cli import main
from leadsync.config import Settings
from leadsync.forms.app import create_app
from leadsync.storage.migrate import upgrade
from leadsync.worker import tasks
from tests.conftest import apply_settings
from tests.support.hubspot_emulator import HubSpotEmulator
from tests.worker.helpers import process

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


OPS_TOKEN = "s3cret-ops-token"


def scrape(client: TestClient, **headers: str) -> Samples:
    response = client.get("/metrics", headers={"Authorization": f"Bearer {OPS_TOKEN}", **headers})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings.model_copy(update={"ops_token": SecretStr(OPS_TOKEN)}))) as test_client:
        yield test_client


def test_metrics_follow_submissions_queues_and_the_outbox(client: TestClient, settings: Settings) -> None:
    ids = [
        client.post("/forms/info-packet", json={"email": f"m{i}@example.org", "first_name": "M"}).json()["id"]
        for i in range(3)
    ]
    client.post("/forms/newsletter", json={"email": "n@example.org"})
    client.post("/forms/newsletter", json={"email": "bot@example.org", "website": "http://spam.example"})

    before = scrape(client)
    assert value(before, "leadsync_dependency_up", dependency="database") == 1
    assert value(before, "leadsync_queue_messages", queue="intake") == 4  # no worker runs here
    assert value(before, "leadsync_queue_messages", queue="email") == 0
    assert value(before, "leadsync_outbox_pending") == 4
    assert (value(before, "leadsync_outbox_oldest_pending_age_seconds") or 0) >= 0
    assert value(before, "leadsync_submissions_accepted_total", form="info_packet") == 3
    assert value(before, "leadsync_submissions_accepted_total", form="newsletter") == 1
    assert value(before, "leadsync_submissions_spam_total", form="newsletter") == 1
    assert value(before, "leadsync_healthy") == 1

    for submission_id in ids:
        process(submission_id, settings)
    after = scrape(client)
    assert value(after, "leadsync_outbox_pending") == 1
    assert value(after, "leadsync_crm_backlog") == 3  # no token: they wait as pending CRM sync
    assert value(after, "leadsync_crm_contacts", status="pending") == 3
    assert value(after, "leadsync_emails", status="pending") == 3
    assert value(after, "leadsync_crm_sync_enabled") == 0
    assert value(after, "leadsync_dead_letters_open") == 0

    report = json.loads(CliRunner().invoke(main, ["status", "--json"]).output)
    assert report["queues"]["intake"] == 4 and report["outbox_pending"] == 1  # the same picture
    assert report["submissions_by_form"]["newsletter"] == {"pending": 1, "spam": 1}


def test_metrics_want_the_ops_token_and_fail_closed_without_one(
    monkeypatch: pytest.MonkeyPatch, base_env: dict[str, str], settings: Settings
) -> None:
    configured = apply_settings(monkeypatch, {**base_env, "OPS_TOKEN": OPS_TOKEN})
    with TestClient(create_app(configured)) as client:
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers={"Authorization": "Bearer nope"}).status_code == 401
        assert value(scrape(client), "leadsync_healthy") == 1
    unset = apply_settings(monkeypatch, {**base_env, "OPS_TOKEN": ""})
    with TestClient(create_app(unset)) as client:  # no OPS_TOKEN: nobody gets in, whatever they send
        assert client.get("/metrics").status_code == 403
        assert client.get("/metrics", headers={"Authorization": "Bearer "}).status_code == 403
        assert "leadsync_" not in client.get("/metrics").text


def status_json() -> tuple[int, dict]:
    result = CliRunner().invoke(main, ["status", "--json"])
    return result.exit_code, json.loads(result.output)


def test_status_json_is_degraded_while_hubspot_answers_401_and_healthy_after(
    monkeypatch: pytest.MonkeyPatch, base_env: dict[str, str], hubspot: HubSpotEmulator, tmp_path: Path
) -> None:
    env = {**base_env, "HUBSPOT_BASE_URL": hubspot.url, "HUBSPOT_TIMEOUT": "2", "OPS_TOKEN": OPS_TOKEN}
    settings = apply_settings(monkeypatch, {**env, "HUBSPOT_ACCESS_TOKEN": "revoked-token"})
    upgrade()
    from tests.worker.helpers import submit

    process(submit("info-packet", email="ann@example.org", first_name="Ann"), settings)
    tasks.flush_crm()  # HubSpot answers 401 to the revoked token
    assert hubspot.count(status=401) >= 1

    code, report = status_json()
    assert code == 1 and report["verdict"] == "degraded"
    assert any("HubSpot refuses the token" in reason for reason in report["reasons"]), report["reasons"]
    assert report["hubspot"]["auth_ok"] is False
    with TestClient(create_app(settings)) as client:
        down = scrape(client)
    assert value(down, "leadsync_hubspot_auth_ok") == 0 and value(down, "leadsync_healthy") == 0

    settings = apply_settings(monkeypatch, {**env, "HUBSPOT_ACCESS_TOKEN": "test-token"})  # the token replaced
    tasks.flush_crm()
    code, report = status_json()
    assert (code, report["verdict"], report["reasons"]) == (0, "healthy", [])
    assert report["crm"] == {"synced": 1} and report["hubspot"]["auth_ok"] is True
    with TestClient(create_app(settings)) as client:
        up = scrape(client)
    assert value(up, "leadsync_hubspot_auth_ok") == 1 and value(up, "leadsync_crm_backlog") == 0
    assert value(up, "leadsync_hubspot_daily_remaining") is not None  # the budget HubSpot reported

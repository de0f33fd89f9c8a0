"""config/prometheus and config/grafana: valid for their tools, and every metric they name is one leadsync exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from pydantic import SecretStr
from starlette.testclient import TestClient

from leadsync import metrics
from leadsync.config import Settings
from leadsync.forms.app import create_app

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "config" / "prometheus"
DASHBOARD = ROOT / "config" / "grafana" / "leadsync-dashboard.json"
METRIC = re.compile(r"\bleadsync_[a-z_]+\b")
REQUIRED_ALERTS = {
    "LeadsyncQueueBacklogGrowing",
    "LeadsyncOutboxStale",
    "LeadsyncDeadLetters",
    "LeadsyncCrmAuthFailing",
    "LeadsyncHubspotBudgetNearlySpent",
}


@pytest.fixture(params=["embedded"])
def backend(request: pytest.FixtureRequest) -> str:
    return request.param  # the names do not depend on the backend: one run is enough


@pytest.fixture
def exported(settings: Settings) -> set[str]:
    """Every sample name leadsync can export: the web's families, and the workers' counters."""
    with TestClient(create_app(settings.model_copy(update={"ops_token": SecretStr("ops")}))) as client:
        text = client.get("/metrics", headers={"Authorization": "Bearer ops"}).text
    names = set()
    for kind_line in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE):
        name, kind = kind_line
        names.add(name)
        if kind == "counter":
            names.add(f"{name}_total")
    for counter in (metrics.TASKS, metrics.HUBSPOT_CALLS, metrics.HUBSPOT_RATE_LIMITED):
        names.add(f"{counter._name}_total")
    return names


def promtool(*args: str) -> None:
    binary = shutil.which("promtool")
    assert binary, "promtool is missing: run scripts/install-test-services.sh (Debian package prometheus)"
    result = subprocess.run([binary, *args], cwd=PROMETHEUS, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_accepts_the_rules_and_the_scrape_config() -> None:
    promtool("check", "rules", "alerts.yml")
    # --syntax-only: the OPS_TOKEN credentials file exists on the Prometheus host, not here (the rules are
    # checked just above).
    promtool("check", "config", "--syntax-only", "prometheus.yml")


def test_each_alert_fires_on_its_series_and_not_before() -> None:
    promtool("test", "rules", "alerts_test.yml")


def test_the_alerts_the_issue_asks_for_are_there_with_severity_and_advice(exported: set[str]) -> None:
    rules = [
        rule for group in yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"] for rule in group["rules"]
    ]
    assert {rule["alert"] for rule in rules} >= REQUIRED_ALERTS
    for rule in rules:
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]
        unknown = set(METRIC.findall(rule["expr"])) - exported
        assert not unknown, (rule["alert"], unknown)
    tested = yaml.safe_load((PROMETHEUS / "alerts_test.yml").read_text())
    covered = {case["alertname"] for test in tested["tests"] for case in test["alert_rule_test"]}
    assert covered >= REQUIRED_ALERTS


def test_the_grafana_dashboard_is_well_formed_and_names_only_exported_metrics(exported: set[str]) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 30
    assert [v["name"] for v in dashboard["templating"]["list"]] == ["datasource"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    seen: set[str] = set()
    for panel in dashboard["panels"]:
        assert panel["type"] in ("timeseries", "stat"), panel["title"]
        grid = panel["gridPos"]
        assert grid["w"] > 0 and grid["h"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["refId"] and target["expr"], panel["title"]
            names = set(METRIC.findall(target["expr"]))
            assert names and not names - exported, (panel["title"], names - exported)
            seen |= names
    # The issue's picture: queues, outbox, submissions, spam, tasks, emails, CRM, HubSpot, dead letters.
    for name in (
        "leadsync_queue_messages",
        "leadsync_outbox_oldest_pending_age_seconds",
        "leadsync_submissions_accepted_total",
        "leadsync_submissions_spam_total",
        "leadsync_tasks_total",
        "leadsync_emails_failed_total",
        "leadsync_crm_sync_lag_seconds",
        "leadsync_hubspot_rate_limited_total",
        "leadsync_hubspot_daily_remaining",
        "leadsync_dead_letters_open",
    ):
        assert name in seen, name

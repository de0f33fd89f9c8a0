"""Production processes refuse an unsafe start; `leadsync check` shows every setting (masked) and every problem.

Real `leadsync` processes in an empty folder (no .env), with only the environment each test gives them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from leadsync.config import Settings

GOOD_SECRET = "a-production-secret-of-forty-bytes-000000"
SETTING_NAMES = {name.upper() for name in Settings.model_fields}


def run(tmp_path: Path, *args: str, **settings: str) -> subprocess.CompletedProcess[str]:
    env = {name: value for name, value in os.environ.items() if name not in SETTING_NAMES}
    env.update({"VAR_DIR": str(tmp_path / "var"), **settings})
    return subprocess.run(
        [sys.executable, "-m", "leadsync", *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("process", ["web", "worker", "beat"])
def test_production_processes_refuse_to_start_without_a_secret_naming_it_in_one_line(
    tmp_path: Path, process: str
) -> None:
    result = run(tmp_path, process, SMTP_HOST="smtp.clinic.example")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "FORM_TOKEN_SECRET is not set" in lines[0], result.stderr


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"FORM_TOKEN_SECRET": "short-secret", "SMTP_HOST": "smtp.clinic.example"}, ["FORM_TOKEN_SECRET is 12 bytes"]),
        ({"FORM_TOKEN_SECRET": GOOD_SECRET}, ["SMTP_HOST is not set"]),
        ({}, ["FORM_TOKEN_SECRET is not set", "SMTP_HOST is not set"]),
    ],
)
def test_web_names_each_missing_variable_on_its_own_line(
    tmp_path: Path, settings: dict[str, str], expected: list[str]
) -> None:
    result = run(tmp_path, "web", **settings)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == len(expected)
    assert all(part in line for part, line in zip(expected, lines, strict=True)), result.stderr


def test_check_masks_every_secret_and_passes_a_safe_configuration(tmp_path: Path) -> None:
    secrets = {
        "FORM_TOKEN_SECRET": GOOD_SECRET,
        "FORM_TOKEN_SECRET_PREVIOUS": "the-previous-secret-also-forty-bytes-0000",
        "OPS_TOKEN": "ops-token-value-1234",
        "SMTP_PASSWORD": "smtp-password-value",
        "HUBSPOT_ACCESS_TOKEN": "pat-na1-hubspot-token-value",
        "DATABASE_URL": "postgresql+psycopg://leadsync:db-password-value@db.internal:5432/leadsync",
        "BROKER_URL": "redis://:redis-password-value@redis.internal:6379/0",
    }
    result = run(
        tmp_path,
        "check",
        **secrets,
        SMTP_HOST="smtp.relay.example",
        SMTP_USERNAME="apikey",
        SMTP_SECURITY="starttls",
        PUBLIC_BASE_URL="https://leads.clinic.example",
    )
    assert result.returncode == 0, result.stdout
    assert "no problems found" in result.stdout
    for name, value in secrets.items():
        secret_part = value.split(":")[2].split("@")[0] if "://" in value else value
        assert secret_part not in result.stdout, name
    shown = dict(line.split(None, 1) for line in result.stdout.splitlines() if line and not line.startswith("("))
    assert shown["FORM_TOKEN_SECRET"] == f"set ({len(GOOD_SECRET)} chars)"
    assert shown["DATABASE_URL"] == "postgresql+psycopg://leadsync:***@db.internal:5432/leadsync"
    assert shown["SMTP_HOST"] == "smtp.relay.example" and shown["FORWARDED_ALLOW_IPS"] == "127.0.0.1"
    assert set(shown) >= SETTING_NAMES  # every setting is listed


def test_check_reports_every_problem_and_exits_1(tmp_path: Path) -> None:
    result = run(
        tmp_path,
        "check",
        DEV_MODE="1",
        FORM_TOKEN_SECRET="too-short",
        SMTP_HOST="smtp.relay.example",
        SMTP_USERNAME="apikey",
        SMTP_PASSWORD="smtp-password-value",
        SMTP_SECURITY="none",
        FORWARDED_ALLOW_IPS="*",
        PUBLIC_BASE_URL="http://leads.clinic.example",
    )
    assert result.returncode == 1
    problems = [line for line in result.stdout.splitlines() if line.startswith("PROBLEM: ")]
    expected = ["DEV_MODE is on", "FORM_TOKEN_SECRET is 9 bytes", "OPS_TOKEN is not set", "in clear text"]
    expected += ["FORWARDED_ALLOW_IPS is '*'", "PUBLIC_BASE_URL is plain http"]
    assert len(problems) == len(expected), problems
    assert all(any(part in line for line in problems) for part in expected), problems
    assert "smtp-password-value" not in result.stdout


def test_check_refuses_the_dev_default_public_url_outside_dev(tmp_path: Path) -> None:
    """The default PUBLIC_BASE_URL (this machine) would put links in every email that open for no one."""
    production = {"FORM_TOKEN_SECRET": GOOD_SECRET, "SMTP_HOST": "smtp.relay.example", "OPS_TOKEN": "ops-token-1234"}
    result = run(tmp_path, "check", **production)
    assert result.returncode == 1
    assert [line for line in result.stdout.splitlines() if line.startswith("PROBLEM: ")] == [
        "PROBLEM: PUBLIC_BASE_URL is http://127.0.0.1:8000: the links in emails would open on no one's machine"
    ]
    fixed = run(tmp_path, "check", **production, PUBLIC_BASE_URL="https://forms.clinic.example")
    assert fixed.returncode == 0, fixed.stdout

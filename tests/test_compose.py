"""docker-compose.yml: valid (checked by docker-compose itself, no engine needed), complete, and running the
same `leadsync` commands the tests run."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
LEADSYNC_SERVICES = {"migrate", "web", "worker", "beat"}


def load() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_file_is_valid() -> None:
    binary = shutil.which("docker-compose")
    assert binary, "docker-compose is missing: run scripts/install-test-services.sh"
    result = subprocess.run([binary, "-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr


def test_the_production_topology_is_all_there() -> None:
    services = load()["services"]
    assert set(services) == LEADSYNC_SERVICES | {"redis", "postgres", "flower", "mailpit"}
    for name in ("web", "worker", "beat"):
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["web"]["env_file"] == "config/.env.example"
    assert services["web"]["environment"]["BROKER_URL"].startswith("redis://")
    assert services["web"]["environment"]["DATABASE_URL"].startswith("postgresql+psycopg://")


def test_every_service_has_a_healthcheck_or_says_why_not() -> None:
    services = load()["services"]
    text = COMPOSE.read_text()
    for name, service in services.items():
        if "healthcheck" in service:
            continue
        block = re.search(rf"^  {name}:\n((?:    .*\n|\n)*)", text, re.MULTILINE)
        assert block, name
        comments = " ".join(line for line in block.group(1).splitlines() if line.strip().startswith("#"))
        assert re.search(r"health", comments, re.IGNORECASE), f"{name}: no healthcheck and no comment saying why"


def test_compose_commands_are_real_leadsync_commands() -> None:
    for name in sorted(LEADSYNC_SERVICES):
        command = load()["services"][name]["command"]
        assert command[0] == "leadsync", name
        # `--help` parses the same arguments without starting anything.
        subcommand = [part for part in command[1:] if not part.startswith("-")][: 2 if command[1] == "db" else 1]
        result = subprocess.run(
            [sys.executable, "-m", "leadsync", *subcommand, "--help"], capture_output=True, text=True, cwd=ROOT
        )
        assert result.returncode == 0, (name, result.stderr)

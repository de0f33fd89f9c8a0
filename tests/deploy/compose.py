"""Render docker-compose.yml the way `docker compose up` would see it, without a container engine.

Debian's docker-compose 1.29.2 (`config`) resolves `env_file`, `${VAR:-default}`, anchors and paths exactly as it
would for `up`; the result is plain YAML. A temporary project directory holds the `.env` (the operator's file)
so the repository's own `.env`, if any, is never read or written.

Example:
    >>> project = make_project(tmp_path, {"SITE_DOMAIN": "forms.clinic.example"})
    >>> render(project)["services"]["web"]["environment"]["BROKER_URL"]
    'redis://redis:6379/0'
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / "config" / ".env.example"
# Every service that runs the leadsync image with the operator's settings.
LEADSYNC_SERVICES = ("check", "migrate", "web", "worker", "beat")


def documented_settings() -> list[str]:
    """Every variable config/.env.example documents (`# NAME=...` lines), in file order."""
    names = re.findall(r"^#\s*([A-Z][A-Z0-9_]*)=", ENV_EXAMPLE.read_text(), re.MULTILINE)
    return list(dict.fromkeys(names))


def write_env(path: Path, values: dict[str, str]) -> None:
    """A .env as an operator writes it: double-quoted values (spaces, `<`, `#` survive)."""
    for name, value in values.items():
        assert '"' not in value and "$" not in value and "\n" not in value, (name, value)
    path.write_text("".join(f'{name}="{value}"\n' for name, value in values.items()))


def make_project(directory: Path, env: dict[str, str]) -> Path:
    """A compose project directory: the repository's compose file and deploy/ folder, plus this `.env`."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "deploy").symlink_to(ROOT / "deploy", target_is_directory=True)
    (directory / "packet").mkdir(exist_ok=True)
    write_env(directory / ".env", env)
    return directory


def render(project: Path, *args: str) -> dict[str, Any]:
    """`docker-compose config` of the repository's compose file in `project` (extra args, e.g. --profile dev)."""
    binary = shutil.which("docker-compose")
    assert binary, "docker-compose is missing: run scripts/install-test-services.sh"
    result = subprocess.run(
        [binary, "--project-directory", str(project), "-f", str(COMPOSE), *args, "config"],
        capture_output=True,
        text=True,
        cwd=project,
    )
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)

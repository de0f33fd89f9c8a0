"""docker-compose.yml: valid (checked by docker-compose itself, no engine needed), carrying every setting of the
operator's .env to every leadsync service, open nowhere by default, and running real `leadsync` commands."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.deploy.compose import COMPOSE, LEADSYNC_SERVICES, ROOT, documented_settings, make_project, render

MINIMAL_ENV = {"SITE_DOMAIN": "forms.clinic.example"}


def load() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.mark.parametrize("profile", [[], ["--profile", "dev"]], ids=["default", "dev"])
def test_compose_file_is_valid(tmp_path: Path, profile: list[str]) -> None:
    project = make_project(tmp_path / "project", MINIMAL_ENV)
    services = render(project, *profile)["services"]
    assert set(LEADSYNC_SERVICES) <= set(services)


def test_compose_refuses_to_run_without_the_operators_env(tmp_path: Path) -> None:
    """No .env, no deployment: the example file's values never run by accident."""
    (tmp_path / "deploy").symlink_to(ROOT / "deploy")
    result = subprocess.run(
        ["docker-compose", "--project-directory", str(tmp_path), "-f", str(COMPOSE), "config", "-q"],
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert "SITE_DOMAIN" in result.stderr or ".env" in result.stderr, result.stderr


def test_every_documented_setting_reaches_every_leadsync_service_unchanged(tmp_path: Path) -> None:
    names = documented_settings()
    assert {"DATABASE_URL", "BROKER_URL", "MAIL_FROM", "SMTP_HOST", "FORM_TOKEN_SECRET"} <= set(names)
    # A distinct value for each, with the characters real values have (spaces, <>, @, :, /, #, commas).
    values = {name: f"{name.lower()} value <{name.lower()}@x.example> #1, /a:b" for name in names}
    values["DATABASE_URL"] = "postgresql+psycopg://app:s3cret@db.managed.example:25060/leads?sslmode=require"
    values["BROKER_URL"] = "rediss://default:pw@cache.managed.example:25061/2"
    project = make_project(tmp_path / "project", {**MINIMAL_ENV, **values})
    services = render(project)["services"]
    for service in LEADSYNC_SERVICES:
        environment = services[service]["environment"]
        wrong = {name: environment.get(name) for name in names if environment.get(name) != values[name]}
        assert not wrong, f"{service}: these settings do not arrive as written in .env: {wrong}"


def test_defaults_point_at_the_compose_services_and_never_at_a_mail_catcher(tmp_path: Path) -> None:
    services = render(make_project(tmp_path / "project", MINIMAL_ENV))["services"]
    for name in LEADSYNC_SERVICES:
        environment = services[name]["environment"]
        assert environment["DATABASE_URL"] == "postgresql+psycopg://leadsync:leadsync@postgres:5432/leadsync"
        assert environment["BROKER_URL"] == "redis://redis:6379/0"
        # SMTP_HOST unset: leadsync refuses to start (or writes .eml files in `leadsync dev`), never mailpit.
        assert "SMTP_HOST" not in environment, name
        assert not any("mailpit" in str(value) for value in environment.values()), name


def _ports(service: dict) -> set[tuple[str, int, int]]:
    """(host address, published, target) of each port, from either of the forms compose 1.29 prints."""
    result = set()
    for port in service.get("ports", []):
        if isinstance(port, str):  # "127.0.0.1:5555:5555" or "80:80"
            *host, published, target = port.split(":")
            result.add((host[0] if host else "", int(published), int(target.split("/")[0])))
        else:
            result.add((port.get("host_ip", ""), int(port["published"]), int(port["target"])))
    return result


def test_nothing_is_published_but_the_proxy(tmp_path: Path) -> None:
    services = render(make_project(tmp_path / "project", MINIMAL_ENV), "--profile", "dev")["services"]
    published = {name: _ports(service) for name, service in services.items() if service.get("ports")}
    assert published.pop("proxy") == {("", 80, 80), ("", 443, 443)}
    # Dev-only tools: in the dev profile and on loopback only.
    assert set(published) == {"flower", "mailpit"}
    for name, ports in published.items():
        assert services[name]["profiles"] == ["dev"], name
        assert {host for host, _, _ in ports} == {"127.0.0.1"}, (name, ports)


def test_flower_refuses_to_start_without_basic_auth() -> None:
    flower = load()["services"]["flower"]
    script = flower["command"][-1]
    assert 'test -n "$$FLOWER_BASIC_AUTH" ||' in script and "exit 1" in script
    assert '--basic_auth="$$FLOWER_BASIC_AUTH"' in script
    assert flower["environment"]["FLOWER_BASIC_AUTH"] == "${FLOWER_BASIC_AUTH:-}"
    assert "FLOWER_BASIC_AUTH" in (ROOT / "README.md").read_text()


def test_web_trusts_forwarded_headers_from_the_proxy_only(tmp_path: Path) -> None:
    rendered = render(make_project(tmp_path / "project", MINIMAL_ENV))
    services = rendered["services"]
    proxy_address = services["proxy"]["networks"]["edge"]["ipv4_address"]
    assert services["web"]["environment"]["FORWARDED_ALLOW_IPS"] == proxy_address
    assert set(services["web"]["networks"]) == {"default", "edge"}
    subnet = rendered["networks"]["edge"]["ipam"]["config"][0]["subnet"]
    assert proxy_address.rsplit(".", 1)[0] == subnet.rsplit(".", 1)[0]
    # The proxy ships the very template the rehearsal runs (tests/deploy/test_rehearsal.py).
    mounts = dict(volume.split(":")[1::-1] for volume in services["proxy"]["volumes"])
    template = Path(mounts["/etc/nginx/templates/leadsync.conf.template"]).resolve()
    assert template == ROOT / "deploy" / "nginx" / "leadsync.conf.template"


def test_the_production_topology_is_all_there() -> None:
    services = load()["services"]
    assert set(services) == {*LEADSYNC_SERVICES, "redis", "postgres", "proxy", "flower", "mailpit"}
    for name in ("web", "worker", "beat"):
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert services["migrate"]["depends_on"]["check"]["condition"] == "service_completed_successfully"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["proxy"]["depends_on"]["web"]["condition"] == "service_healthy"
    for name in LEADSYNC_SERVICES:
        assert services[name]["env_file"] == ".env", name


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


@pytest.mark.parametrize("name", LEADSYNC_SERVICES)
def test_compose_commands_are_real_leadsync_commands(name: str) -> None:
    """`check` is the security branch's `leadsync check`: this case fails until that branch is merged."""
    command = load()["services"][name]["command"]
    assert command[0] == "leadsync", name
    # `--help` parses the same arguments without starting anything.
    subcommand = [part for part in command[1:] if not part.startswith("-")][: 2 if command[1] == "db" else 1]
    result = subprocess.run(
        [sys.executable, "-m", "leadsync", *subcommand, "--help"], capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 0, (name, result.stderr)


def _pins(lock: Path) -> dict[str, tuple[str, int]]:
    """name -> (version, number of hashes) of each `name==version` in a pip lock file."""
    pin = re.compile(r"^([A-Za-z0-9_.\-]+)==([^\s;]+)[^\n\\]*((?:\\\n\s+--hash=sha256:[0-9a-f]{64}\s*)*)", re.M)
    pins = {}
    for match in pin.finditer(lock.read_text()):
        name = re.sub(r"[-_.]+", "-", match.group(1)).lower()
        pins[name] = (match.group(2), match.group(3).count("--hash="))
    return pins


@pytest.mark.parametrize(("lock", "extras"), [("runtime.txt", ()), ("test.txt", ("test",))])
def test_the_lock_files_pin_every_dependency_with_hashes_within_pyprojects_ranges(lock: str, extras: tuple) -> None:
    """A stale lock (a dependency added or a floor raised without `scripts/lock`) fails here, not in the image."""
    import tomllib

    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [*project["dependencies"], *(dep for extra in extras for dep in project["optional-dependencies"][extra])]
    wanted += ["setuptools>=69", "wheel"]  # the build backend (requirements/build.in): the image builds offline
    pins = _pins(ROOT / "requirements" / lock)
    assert all(count >= 1 for _, count in pins.values()), "every pin needs its hashes (--generate-hashes)"
    for line in wanted:
        requirement = Requirement(line)
        name = re.sub(r"[-_.]+", "-", requirement.name).lower()
        assert name in pins, f"{name} is not in requirements/{lock}: run scripts/lock"
        assert requirement.specifier.contains(pins[name][0], prereleases=True), (line, pins[name][0])


def test_the_image_and_the_test_setup_install_from_the_lock_files() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "pip install --require-hashes -r requirements/runtime.txt" in dockerfile
    assert "pip install --no-deps --no-build-isolation ." in dockerfile
    bootstrap = (ROOT / "scripts" / "bootstrap.sh").read_text()
    assert 'pip install --quiet --require-hashes -r "$LOCK"' in bootstrap
    assert 'LOCK="$ROOT/requirements/test.txt"' in bootstrap
    # A pulled lock change re-installs: the stamp hashes the lock files too.
    assert '"$ROOT"/requirements/*.txt | sha256sum' in bootstrap

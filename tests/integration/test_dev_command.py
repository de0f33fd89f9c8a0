"""`leadsync dev` in an empty folder, with no configuration at all: the embedded default."""

from __future__ import annotations

import email
import email.policy
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.support.services import free_port
from tests.support.stack import wait_for

pytestmark = pytest.mark.integration

CONFIG_NAMES = (
    "DATABASE_URL",
    "BROKER_URL",
    "SMTP_HOST",
    "HUBSPOT_ACCESS_TOKEN",
    "VAR_DIR",
    "DEV_MODE",
    "FORM_TOKEN_SECRET",
    "FORM_TOKEN_SECRET_PREVIOUS",
)


def test_dev_in_an_empty_folder_turns_a_post_into_an_eml_with_the_pdf(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in CONFIG_NAMES}
    port = free_port()
    log = (tmp_path / "dev.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "leadsync", "dev", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            wait_for(lambda: _ready(client), timeout=30, what="leadsync dev to answer")
            assert "Request Information Packet" in client.get("/").text  # the demo page for newcomers
            response = client.post("/forms/info-packet", data={"email": "new@example.org", "first_name": "New"})
            assert response.status_code == 202

        outbox = tmp_path / "var" / "outbox"
        [eml] = wait_for(lambda: list(outbox.glob("*.eml")), timeout=15, what="an .eml in var/outbox")
        message = email.message_from_bytes(eml.read_bytes(), policy=email.policy.default)
        assert message["To"] == "new@example.org"
        secret = tmp_path / "var" / "form-token-secret"  # generated once, private to its owner
        assert secret.stat().st_mode & 0o777 == 0o600 and len(secret.read_text().strip()) >= 43
        [attachment] = list(message.iter_attachments())
        assert attachment.get_content_type() == "application/pdf"

        status = subprocess.run(
            [sys.executable, "-m", "leadsync", "status"], cwd=tmp_path, env=env, capture_output=True, text=True
        )
        assert "HUBSPOT_ACCESS_TOKEN is not set (1 contacts pending)" in status.stdout, status.stdout
        assert status.returncode == 0
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)
        log.close()
    output = (tmp_path / "dev.log").read_text()
    assert "pending CRM sync until HUBSPOT_ACCESS_TOKEN is set" in output  # said at start


def _ready(client: httpx.Client) -> bool:
    try:
        return client.get("/readyz").status_code == 200
    except httpx.HTTPError:
        return False


def _children() -> dict[int, int]:
    """pid -> parent pid of every process, from /proc."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue  # gone meanwhile
        parents[int(stat.parent.name)] = int(text.rpartition(")")[2].split()[1])
    return parents


def _descendants(pid: int) -> set[int]:
    parents, found, frontier = _children(), set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _at_least(count: int, pids: set[int]) -> set[int] | None:
    return pids if len(pids) >= count else None


def _alive(pid: int) -> bool:
    """Running, and not a zombie waiting for its parent to collect it."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_dev_stops_its_worker_and_scheduler_on_a_signal_within_10_seconds(tmp_path: Path, signum: int) -> None:
    env = {k: v for k, v in os.environ.items() if k not in CONFIG_NAMES}
    port = free_port()
    log_path = tmp_path / "dev.log"
    with log_path.open("wb") as log:
        # Its own process group, as a process manager starts it; the signal goes to the dev process only.
        process = subprocess.Popen(
            [sys.executable, "-m", "leadsync", "dev", "--port", str(port)],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
                wait_for(lambda: _ready(client), timeout=30, what="leadsync dev to answer")
            wait_for(lambda: b" ready." in log_path.read_bytes(), timeout=30, what="its worker ready")
            # The worker, its two pool processes and the embedded scheduler.
            children = wait_for(lambda: _at_least(4, _descendants(process.pid)), what="4 processes under dev")
            process.send_signal(signum)
            started = time.monotonic()
            wait_for(
                lambda: not _alive(process.pid) and not any(_alive(pid) for pid in children),
                timeout=10,
                what="dev and every process it started to exit",
            )
            assert time.monotonic() - started < 10
            assert process.wait(timeout=1) == 128 + signum
        finally:
            for pid in [process.pid, *_descendants(process.pid)]:
                if _alive(pid):
                    os.kill(pid, signal.SIGKILL)
            process.wait(timeout=10)

"""`leadsync dev` in an empty folder, with no configuration at all: the embedded default."""

from __future__ import annotations

import email
import email.policy
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.support.services import free_port
from tests.support.stack import wait_for

pytestmark = pytest.mark.integration

CONFIG_NAMES = ("DATABASE_URL", "BROKER_URL", "SMTP_HOST", "HUBSPOT_ACCESS_TOKEN", "VAR_DIR", "DEV_MODE")


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

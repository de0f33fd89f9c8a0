"""The production commands as production runs them: `leadsync web --workers 2`, `leadsync beat` and a
`leadsync worker` (no --beat) as three separate processes on Redis + PostgreSQL. Posts flow end to end:
every lead stored once, emailed once (raw bytes at the SMTP server) and created once in HubSpot; the CRM
flush and the sweeper only run because the standalone beat schedules them.

Example:
    .venv/bin/pytest tests/integration/test_production_commands.py -q
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session

from leadsync.storage.models import Submission
from tests.support.hubspot_emulator import HubSpotEmulator
from tests.support.services import SmtpSink
from tests.support.stack import TEST_SECRET, LeadsyncStack, services_env, wait_for

pytestmark = pytest.mark.integration

LEADS = 30


@pytest.fixture
def production(
    tmp_path: Path, production_env: dict[str, str], smtp: SmtpSink, hubspot: HubSpotEmulator
) -> Iterator[LeadsyncStack]:
    env = {**production_env, **services_env(smtp, hubspot), "SWEEP_INTERVAL_SECONDS": "1"}
    stack = LeadsyncStack(env, tmp_path, workers=1, web_workers=2, separate_beat=True).start()
    yield stack
    stack.stop()
    print(stack.logs())  # captured: shown only when the test failed


def test_web_with_2_workers_beat_and_a_worker_as_separate_processes_deliver_every_post_once(
    production: LeadsyncStack, smtp: SmtpSink, hubspot: HubSpotEmulator
) -> None:
    emails = [f"prod{i}@example.org" for i in range(LEADS)]

    def post(email: str) -> int:
        # A new connection per post: the kernel spreads them over both uvicorn workers.
        with httpx.Client(base_url=production.url, timeout=10) as client:
            return client.post("/forms/info-packet", json={"email": email, "first_name": "Prod"}).status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert list(pool.map(post, emails)) == [202] * LEADS

    wait_for(lambda: set(hubspot.created) >= set(emails), timeout=60, what="every lead created in HubSpot")
    wait_for(lambda: len(smtp.received) >= LEADS, timeout=60, what="every packet at the SMTP server")
    copies = Counter(rcpt for mail in smtp.received for rcpt in mail.rcpt_tos)
    assert copies == Counter(emails)  # each lead emailed once
    for mail in smtp.received:  # the packet on the wire, addressed to its lead, with its Message-ID
        assert mail.rcpt_tos[0].encode() in mail.raw and b"\r\nMessage-ID: <" in mail.raw
    assert hubspot.created == dict.fromkeys(emails, 1) and hubspot.writes == dict.fromkeys(emails, 1)
    engine = create_engine(production.env["DATABASE_URL"])
    with Session(engine) as session:
        assert session.scalar(select(func.count()).select_from(Submission)) == LEADS
        assert session.scalar(select(func.count()).where(Submission.status != "processed")) == 0
    engine.dispose()

    # The topology really was the one named: two uvicorn server processes, beat alone scheduling, a worker
    # without an embedded beat.
    web_log = (production.workdir / "web.log").read_text()
    assert len(set(re.findall(r"Started server process \[(\d+)\]", web_log))) == 2
    beat_log = (production.workdir / "beat.log").read_text()
    assert "Scheduler: Sending due task" in beat_log and "leadsync.flush_crm" in beat_log
    assert "beat: Starting" not in (production.workdir / "worker0.log").read_text()

    # Each web process listens on a socket of its own (SO_REUSEPORT, leadsync/web_workers.py), so 64 keep-alive
    # connections opened at once (a load balancer's pool, wrk) spread over both. From one shared socket the
    # first process awake took a burst: 44/20 measured, and the one holding 44 answered twice as late.
    servers = [int(pid) for pid in dict.fromkeys(re.findall(r"Started server process \[(\d+)\]", web_log))]
    listening = {pid: sockets_of(pid) & tcp_sockets(production.port, LISTEN) for pid in servers}
    assert all(len(own) == 1 for own in listening.values()) and len(set.union(*listening.values())) == 2
    connections = [socket.create_connection(("127.0.0.1", production.port)) for _ in range(64)]
    try:
        for connection in connections:  # one request each: accepted and served, kept alive
            connection.sendall(b"GET /healthz HTTP/1.1\r\nHost: leadsync\r\n\r\n")
            assert connection.recv(4096).startswith(b"HTTP/1.1 200")
        established = tcp_sockets(production.port, ESTABLISHED)
        held = sorted(len(sockets_of(pid) & established) for pid in servers)
    finally:
        for connection in connections:
            connection.close()
    # (>= 64: the stack's own client may hold one more.) A hash split: 32 +- 4 typically, below 16 about never.
    assert sum(held) >= 64 and held[0] >= 16, held


def test_web_with_workers_refuses_a_port_an_older_web_still_listens_on(tmp_path: Path) -> None:
    # An older `leadsync web --workers 2` left running (its sockets set SO_REUSEPORT, as ours do): a new one must
    # not quietly join it and share the visitors, but refuse, as a plain bind would.
    with socket.socket() as older:
        older.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        older.bind(("127.0.0.1", 0))
        older.listen()
        port = older.getsockname()[1]
        env = {
            **os.environ,
            "DEV_MODE": "1",
            "FORM_TOKEN_SECRET": TEST_SECRET,
            "VAR_DIR": str(tmp_path / "var"),
            "DATABASE_URL": f"sqlite:///{tmp_path / 'leadsync.db'}",
            "BROKER_URL": "filesystem://",
        }
        command = [sys.executable, "-m", "leadsync", "web", "--workers", "2", "--port", str(port)]
        started = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert started.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in started.stderr


LISTEN, ESTABLISHED = "0A", "01"  # the st column of /proc/net/tcp


def tcp_sockets(port: int, state: str) -> set[int]:
    """Inodes of the loopback TCP sockets with local port `port` in `state`, from /proc/net/tcp(6)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == state:
                inodes.add(int(fields[9]))
    return inodes


def sockets_of(pid: int) -> set[int]:
    """Inodes of the sockets process `pid` has open."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            if (target := os.readlink(fd)).startswith("socket:["):
                inodes.add(int(target[8:-1]))
    return inodes

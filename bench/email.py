"""Email throughput: one `leadsync worker --concurrency 2` sending to a local SMTP server (issue 18, point 2).

What it measures: --emails info-packet posts (distinct people) stored by `leadsync web` and turned into
queued packet emails by an intake-only worker, which then stops; then the default worker (`leadsync worker
--concurrency 2`, its reserved CRM process idle: no HubSpot token) starts and sends the backlog to an
in-process aiosmtpd server (tests/support/services.py SmtpSink, which offers PIPELINING as relays do). The
clock runs from the first message the server accepts to the last, so worker start-up is not timed. Each email
still goes through the claim state machine (claim, attempt row, SMTP, sent), batched (worker/mail/sending.py
`deliver_batch`: a transaction per 25 emails) over one SMTP connection a batch (worker/mail/transport.py).
PostgreSQL with its durable defaults.
The server keeps each message's envelope and bytes and parses them only after the clock stops (`RawSink`):
the test suite's sink parses every message as it arrives, ~3 ms of this process's CPU each, which capped
the measurement rather than the worker.

Targets (PASS/FAIL): at least 300 emails/s; every email delivered exactly once.

Run from the repository root:
    ./bench/run email                    # 3,000 emails
    ./bench/run email --emails 10000 --json /tmp/email.json
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from bench.processes import (
    Proc,
    RssSampler,
    cpu_seconds,
    descendants,
    free_port,
    print_verdicts,
    start_services,
    wait_http,
)
from tests.support.services import SmtpSink

TARGET_PER_SECOND = 300
MESSAGE_ID = re.compile(rb"^Message-ID: *(<[^>\r\n]+>)", re.IGNORECASE | re.MULTILINE)


class RawSink(SmtpSink):
    """The aiosmtpd sink, keeping (recipients, raw bytes) per message without parsing it (see the docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self.raw: list[tuple[tuple[str, ...], bytes]] = []

    def _deliver(self, envelope: Any) -> None:  # aiosmtpd's DATA hook, before the 250 goes out
        with self._cond:
            self.raw.append((tuple(envelope.rcpt_tos), envelope.original_content or envelope.content))


def post_all(url: str, count: int, run: str) -> int:
    """`count` distinct info-packet posts from 16 threads; how many were answered 202."""

    def post(indexes: range) -> int:
        with httpx.Client(base_url=url, timeout=30) as client:
            return sum(
                client.post("/forms/info-packet", json={"email": f"mail-{run}-{i}@example.org", "first_name": "A"})
                .status_code == 202
                for i in indexes
            )  # fmt: skip

    with ThreadPoolExecutor(16) as pool:
        return sum(pool.map(post, [range(i, count, 16) for i in range(16)]))


def tree_cpu(root: int) -> float:
    """CPU seconds used so far by a process and everything under it (the worker and its pool)."""
    return sum(cpu_seconds(pid) or 0.0 for pid in [root, *descendants(root)])


def scalar(dsn: str, sql: str) -> int:
    import psycopg

    with psycopg.connect(dsn) as connection:
        row = connection.execute(sql).fetchone()
    return int(row[0]) if row else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--emails", type=int, default=3000)
    parser.add_argument("--json", type=Path, default=None, metavar="PATH")
    args = parser.parse_args()
    run = str(int(time.time()))
    sink = RawSink().start()
    try:
        with start_services("leadsync-email-") as services:
            env = services.leadsync_env(
                services.database("leadsync"),
                SMTP_HOST=sink.host, SMTP_PORT=str(sink.port), LOG_LEVEL="WARNING",
                RATE_LIMIT_PER_IP="", RATE_LIMIT_PER_EMAIL="",
            )  # fmt: skip
            dsn = services.postgres.dsn("leadsync")
            home = services.workdir / "leadsync"
            home.mkdir(parents=True, exist_ok=True)
            subprocess.run([sys.executable, "-m", "leadsync", "db", "upgrade"], cwd=home, env=env, check=True)
            port = free_port()
            web_argv = [sys.executable, "-m", "leadsync", "web", "--port", str(port)]
            with Proc("web", web_argv, env, services.workdir, home) as web:
                wait_http(f"http://127.0.0.1:{port}/readyz", web)
                accepted = post_all(f"http://127.0.0.1:{port}", args.emails, run)
            print(f"{accepted:,} posts accepted; queueing their emails (intake only) ...", flush=True)
            intake = [sys.executable, "-m", "leadsync", "worker", "-Q", "intake", "-c", "2", "-n", "intake@%h"]
            with Proc("intake", intake, env, services.workdir, home) as worker:
                while scalar(dsn, "SELECT count(*) FROM submissions WHERE status = 'pending'"):
                    time.sleep(0.2)
            queued = scalar(dsn, "SELECT count(*) FROM email_sends WHERE status = 'pending'")
            print(f"{queued:,} emails queued; the default worker sends them ...", flush=True)
            default = [sys.executable, "-m", "leadsync", "worker", "--concurrency", "2", "-n", "mail@%h"]
            with (
                Proc("worker", default, env, services.workdir, home) as worker,
                RssSampler({"worker": worker.pid}) as rss,
            ):
                first = last = None
                cpu_first = 0.0
                deadline = time.monotonic() + 600
                while len(sink.raw) < queued and time.monotonic() < deadline and worker.alive:
                    if first is None and sink.raw:
                        first, cpu_first = time.monotonic(), tree_cpu(worker.pid)
                    time.sleep(0.02)
                last, worker_cpu = time.monotonic(), tree_cpu(worker.pid) - cpu_first
                time.sleep(1)  # a second copy of anything would arrive now
            sent = scalar(dsn, "SELECT count(*) FROM email_sends WHERE status = 'sent'")
            peak = rss.largest("worker")
    finally:
        sink.stop()

    copies = Counter(r for recipients, _ in sink.raw for r in recipients)
    message_ids = Counter(m.group(1) for _, raw in sink.raw if (m := MESSAGE_ID.search(raw)))
    seconds = (last - first) if first else float("nan")
    rate = (queued - 1) / seconds if first and seconds > 0 else 0.0
    figures: dict[str, Any] = {
        "posts_accepted": accepted, "emails_queued": queued, "emails_received": len(sink.raw),
        "emails_marked_sent": sent, "duplicates": sum(n - 1 for n in copies.values() if n > 1),
        "seconds_first_to_last": round(seconds, 2), "emails_per_second": round(rate),
        "smtp_connections": sink.commands.count("EHLO") + sink.commands.count("HELO"),
        "worker_peak_rss_mb": round(peak.peak_mb, 1) if peak else None,
        "worker_cpu_seconds_first_to_last": round(worker_cpu, 2),
        "worker_cpu_ms_per_email": round(worker_cpu * 1000 / queued, 2) if queued else None,
        "load_average_1m": round(os.getloadavg()[0], 2),
    }  # fmt: skip
    checks = [
        (rate >= TARGET_PER_SECOND, f"{rate:,.0f} emails/s >= {TARGET_PER_SECOND}"),
        (
            len(copies) == queued == sent == len(message_ids) and figures["duplicates"] == 0,
            f"every email delivered once: {len(copies):,} recipients, {len(message_ids):,} Message-IDs, "
            f"{sent:,} sent of {queued:,}, "
            f"{figures['duplicates']} duplicates",
        ),
    ]
    return 0 if print_verdicts(figures, checks, args.json) else 1


if __name__ == "__main__":
    raise SystemExit(main())

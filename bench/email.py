"""Email throughput: one `leadsync worker --concurrency 2` sending to a local SMTP server (issue 18, point 2).

What it measures: --emails info-packet posts (distinct people) stored by `leadsync web` and turned into
queued packet emails by an intake-only worker, which then stops; then the default worker (`leadsync worker
--concurrency 2`, its reserved CRM process idle: no HubSpot token) starts and sends the backlog to a local SMTP
server. The clock runs from the first message the server accepts to the last, so worker start-up is not timed.
Each email still goes through the claim state machine (claim, attempt row, SMTP, sent), batched
(worker/mail/sending.py `deliver_batch`: a transaction per 25 emails) over one SMTP connection a batch
(worker/mail/transport.py). PostgreSQL with its durable defaults.

The server (--sink):
- `smtp-sink` (the default): Postfix's test server (Debian's postfix package; `./bench/run email` installs it,
  unconfigured and never started as a mail system). Written in C, it offers PIPELINING as relays do and writes
  each message, envelope first, to a file of its own, read after the clock stops.
- `aiosmtpd`: the test suite's server (tests/support/services.py SmtpSink), in this process, keeping each
  message's bytes (`RawSink`). It is Python, reading a message line by line: a py-spy profile of the worker
  under it found its pool processes waiting for the server's replies 41% of the time, so it measured the
  server as much as the worker (docs/benchmarks.md "Seventh round").

Targets (PASS/FAIL): at least 300 emails/s; every email delivered exactly once.

Run from the repository root:
    ./bench/run email                    # 3,000 emails
    ./bench/run email --emails 10000 --json /tmp/email.json
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
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
RCPT = re.compile(rb"^X-Rcpt-Args: <([^>\r\n]*)>", re.MULTILINE)  # smtp-sink's envelope lines


class RawSink(SmtpSink):
    """The aiosmtpd sink, keeping (recipients, raw bytes) per message without parsing it (see the docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self.raw: list[tuple[tuple[str, ...], bytes]] = []

    def _deliver(self, envelope: Any) -> None:  # aiosmtpd's DATA hook, before the 250 goes out
        with self._cond:
            self.raw.append((tuple(envelope.rcpt_tos), envelope.original_content or envelope.content))

    def received(self) -> int:
        return len(self.raw)

    def messages(self) -> list[tuple[tuple[str, ...], bytes]]:
        return list(self.raw)

    def connections(self) -> int:
        return self.commands.count("EHLO") + self.commands.count("HELO")


class PostfixSmtpSink:
    """Postfix's smtp-sink on a free loopback port, writing each message to a file in `directory`.

    Each file holds the envelope (`X-Rcpt-Args: <address>` a recipient), a Received line, then the message as
    sent. `-c` prints running counters (`sess=N quit=N mesg=N`) to its stdout: `sess` counts connections.
    """

    BINARY = "/usr/sbin/smtp-sink"

    def __init__(self, directory: Path) -> None:
        self.host = "127.0.0.1"
        self.port = free_port()
        self.directory = directory
        self._proc: subprocess.Popen[bytes] | None = None
        self._counters = directory.parent / "smtp-sink.counters"

    def start(self) -> PostfixSmtpSink:
        self.directory.mkdir(parents=True)
        argv = [self.BINARY, "-c"]
        if os.geteuid() == 0:  # smtp-sink refuses to run as root: it drops to nobody, who writes the files
            argv += ["-u", "nobody"]
            shutil.chown(self.directory, "nobody")
            self.directory.parent.chmod(0o711)  # a temporary directory is 0700: nobody could not reach its own
        argv += ["-d", f"{self.directory}/m.", f"{self.host}:{self.port}", "256"]
        with self._counters.open("wb") as counters:
            self._proc = subprocess.Popen(argv, stdout=counters, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection((self.host, self.port), timeout=1).close()
                return self
            except OSError:
                if self._proc.poll() is not None:
                    raise RuntimeError(f"smtp-sink exited: {self._counters.read_text()}") from None
                time.sleep(0.05)
        raise RuntimeError("smtp-sink did not listen within 10 s")

    def received(self) -> int:
        if self._proc is None or self._proc.poll() is not None:  # fatal errors end it: say so, do not wait
            raise RuntimeError(f"smtp-sink exited: {self._counters.read_text(errors='replace')[-500:]}")
        return sum(1 for _ in os.scandir(self.directory))

    def messages(self) -> list[tuple[tuple[str, ...], bytes]]:
        """(recipients, message bytes) of every file."""
        found = []
        for entry in os.scandir(self.directory):
            data = Path(entry.path).read_bytes()
            recipients = tuple(r.decode() for r in RCPT.findall(data))
            found.append((recipients, data))
        return found

    def connections(self) -> int:
        sessions = re.findall(rb"sess=(\d+)", self._counters.read_bytes())
        return int(sessions[-1]) if sessions else 0

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            self._proc.wait(timeout=10)


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
    parser.add_argument("--sink", choices=["smtp-sink", "aiosmtpd"], default="smtp-sink", help="the SMTP server")
    args = parser.parse_args()
    run = str(int(time.time()))
    scratch = tempfile.TemporaryDirectory(prefix="leadsync-smtp-sink-")
    sink: RawSink | PostfixSmtpSink
    sink = PostfixSmtpSink(Path(scratch.name) / "mail") if args.sink == "smtp-sink" else RawSink()
    sink.start()
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
                while (received := sink.received()) < queued and time.monotonic() < deadline and worker.alive:
                    if first is None and received:
                        first, cpu_first = time.monotonic(), tree_cpu(worker.pid)
                    time.sleep(0.02)
                last, worker_cpu = time.monotonic(), tree_cpu(worker.pid) - cpu_first
                time.sleep(1)  # a second copy of anything would arrive now
            sent = scalar(dsn, "SELECT count(*) FROM email_sends WHERE status = 'sent'")
            peak = rss.largest("worker")
        messages = sink.messages()
        connections = sink.connections()
    finally:
        sink.stop()
        scratch.cleanup()

    copies = Counter(r for recipients, _ in messages for r in recipients)
    message_ids = Counter(m.group(1) for _, raw in messages if (m := MESSAGE_ID.search(raw)))
    seconds = (last - first) if first else float("nan")
    rate = (queued - 1) / seconds if first and seconds > 0 else 0.0
    figures: dict[str, Any] = {
        "posts_accepted": accepted, "emails_queued": queued, "emails_received": len(messages), "smtp_server": args.sink,
        "emails_marked_sent": sent, "duplicates": sum(n - 1 for n in copies.values() if n > 1),
        "seconds_first_to_last": round(seconds, 2), "emails_per_second": round(rate),
        "smtp_connections": connections,
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

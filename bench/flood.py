"""Flood (issue 18, point 5): 20,000 spam posts at full speed while real visitors post 20 a second.

What it measures: one `leadsync web` (as `leadsync web` starts it, every check on, the production rate
limits: RATE_LIMIT_PER_IP 20 per 10 minutes, RATE_LIMIT_PER_EMAIL 5 per hour) and one `leadsync worker
--concurrency 2 --beat` on Redis + PostgreSQL (durable defaults), sending to an SMTP sink in this process.

- the flood: `wrk -t2 -c64 -s bench/flood.lua`, 20,000 posts (--flood) from one address (X-Forwarded-For
  203.0.113.66, which the web believes from 127.0.0.1, its default FORWARDED_ALLOW_IPS): every other one
  fills the honeypot, the others look like leads for different victims and go over the per-IP limit after
  its allowance;
- real visitors: an open-loop asyncio client in this process, 20 posts a second (--rate) from the moment
  the flood starts until it ends, each a different person from a different address (X-Forwarded-For
  10.20.x.y), with an Idempotency-Key and, like the snippet, one retry of a 503 after its Retry-After;
  the same visitors post alone for --baseline seconds first, so the report shows what the flood cost them
  on the machine as loaded at the time.

Targets (each PASS/FAIL): every real lead answered 202, stored (not as spam) and emailed once; real leads'
p99 (first send to final answer, a retry included) < 100 ms; the database grows by less than 10 MB
(pg_database_size before the flood and after the last real lead was emailed). Also printed: the flood's
answers, rate and latency, and how many of its posts were stored as leads (the address's allowance).

Run from the repository root:
    ./bench/run flood
    ./bench/run flood --flood 5000 --rate 20 --json /tmp/flood.json
"""

from __future__ import annotations

import argparse
import asyncio
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg

from bench.processes import (
    BENCH,
    Proc,
    WrkResult,
    cpu_seconds,
    free_port,
    parse_wrk,
    print_verdicts,
    start_services,
    wait_for_log,
    wait_http,
)
from tests.support.services import SmtpSink

SCRIPT = BENCH / "flood.lua"
P99_MS, GROWTH_MB = 100.0, 10.0


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")


async def visitors(
    url: str, run: str, rate: float, flood_done: threading.Event, first: int = 0
) -> list[tuple[str, int, float]]:
    """Real visitors at `rate` a second until `flood_done` is set: (email, final status, seconds to it) each;
    numbered from `first` (their addresses and emails never repeat within a run)."""
    results: list[tuple[str, int, float]] = []

    async def one(client: httpx.AsyncClient, index: int) -> None:
        email = f"real-{run}-{index}@example.org"
        headers = {
            "X-Forwarded-For": f"10.20.{index // 250}.{index % 250 + 1}",
            "Idempotency-Key": secrets.token_hex(8),
            "Accept": "application/json",
        }
        body = {"email": email, "first_name": "Real", "interest": "knee pain", "website": ""}
        started = time.monotonic()
        status = 0
        for attempt in range(2):  # the snippet: one retry of a 503 after its Retry-After
            try:
                response = await client.post("/forms/info-packet", data=body, headers=headers)
                status = response.status_code
            except httpx.HTTPError:
                status = -1
            if status != 503 or attempt:
                break
            await asyncio.sleep(float(response.headers.get("retry-after", "2")))
        results.append((email, status, time.monotonic() - started))

    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    async with httpx.AsyncClient(base_url=url, timeout=10, limits=limits) as client:
        tasks: list[asyncio.Task[None]] = []
        start = time.monotonic()
        index = 0
        while not flood_done.is_set():
            await asyncio.sleep(max(0.0, start + index / rate - time.monotonic()))  # open loop: never waits for answers
            tasks.append(asyncio.create_task(one(client, first + index)))
            index += 1
        await asyncio.gather(*tasks)
    return results


def flood_posts(url: str, run: str, posts: int, connections: int, threads: int = 2) -> WrkResult:
    """`wrk -s bench/flood.lua` until `posts` are answered: each thread stops at its share and says so on
    stderr; wrk's main thread would sleep out its whole -d, so it is interrupted then (its report follows)."""
    command = [
        "wrk", f"-t{threads}", f"-c{connections}", "-d3600s", "--timeout=5s", "--latency", "-s", str(SCRIPT), url,
        "--", run, str(posts // threads),
    ]  # fmt: skip
    wrk = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert wrk.stderr is not None
    finished = 0
    for line in wrk.stderr:
        finished += line.startswith("BENCH quota_done")
        if finished == threads:
            wrk.send_signal(signal.SIGINT)
            break
    output, _ = wrk.communicate(timeout=60)
    return parse_wrk(output)


def database_mb(dsn: str) -> float:
    with psycopg.connect(dsn) as connection:
        row = connection.execute("SELECT pg_database_size(current_database())").fetchone()
    return int(row[0]) / 2**20 if row else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flood", type=int, default=20_000, help="spam posts, at full speed")
    parser.add_argument("--rate", type=float, default=20.0, help="real visitors a second during the flood")
    parser.add_argument("--connections", type=int, default=64, help="the flood's wrk connections")
    parser.add_argument("--baseline", type=float, default=10.0, help="seconds of real visitors before the flood")
    parser.add_argument("--delivery-timeout", type=float, default=120.0, help="seconds to wait for the emails")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH")
    args = parser.parse_args()
    run = secrets.token_hex(3)
    smtp = SmtpSink().start()
    try:
        with start_services("leadsync-flood-") as services:
            database = services.database("leadsync")
            dsn = services.postgres.dsn("leadsync")
            env = services.leadsync_env(
                database, SMTP_HOST=smtp.host, SMTP_PORT=str(smtp.port), DEV_MODE="0", LOG_LEVEL="WARNING"
            )
            home = services.workdir / "leadsync"
            home.mkdir(parents=True, exist_ok=True)
            subprocess.run([sys.executable, "-m", "leadsync", "db", "upgrade"], cwd=home, env=env, check=True)
            port = free_port()
            web_argv = [sys.executable, "-m", "leadsync", "web", "--port", str(port)]
            worker_argv = [sys.executable, "-m", "leadsync", "worker", "--concurrency", "2", "--beat", "-n", "flood@%h"]
            with (
                Proc("web", web_argv, env, services.workdir, home) as web,
                # INFO: Celery says " ready." at that level.
                Proc("worker", worker_argv, {**env, "LOG_LEVEL": "INFO"}, services.workdir, home) as worker,
            ):
                url = f"http://127.0.0.1:{port}"
                wait_http(f"{url}/readyz", web)
                wait_for_log(worker, " ready.")
                before_mb = database_mb(dsn)
                print(
                    f"flood: {args.flood:,} spam posts, wrk -t2 -c{args.connections}, from one address; "
                    f"real visitors {args.rate:g}/s meanwhile; {url}",
                    flush=True,
                )
                # The same visitors without the flood first: what the flood costs them, on this machine now.
                quiet = threading.Event()
                threading.Timer(args.baseline, quiet.set).start()
                alone = asyncio.run(visitors(url, f"{run}b", args.rate, quiet))
                flood_done = threading.Event()
                flood: dict[str, WrkResult] = {}

                def run_flood() -> None:
                    try:
                        flood["result"] = flood_posts(url, run, args.flood, args.connections)
                    finally:
                        flood_done.set()

                thread = threading.Thread(target=run_flood, daemon=True)
                cpu_before = cpu_seconds(web.pid) or 0.0
                thread.start()
                real = asyncio.run(visitors(url, run, args.rate, flood_done, first=len(alone)))
                thread.join()
                web_cpu = (cpu_seconds(web.pid) or 0.0) - cpu_before
                emails = {email for email, _, _ in real + alone}
                deadline = time.monotonic() + args.delivery_timeout
                while time.monotonic() < deadline:
                    delivered = [r for mail in smtp.received for r in mail.rcpt_tos if r in emails]
                    if set(delivered) >= emails:
                        break
                    time.sleep(0.5)
                time.sleep(2)  # a late second copy would show here
                delivered = [r for mail in smtp.received for r in mail.rcpt_tos if r in emails]
                after_mb = database_mb(dsn)
                with psycopg.connect(dsn) as connection:
                    stored = dict(
                        connection.execute(
                            "SELECT email, status FROM submissions WHERE email LIKE %s", (f"real-{run}%",)
                        ).fetchall()
                    )
                    (flood_leads,) = connection.execute(
                        "SELECT count(*) FROM submissions WHERE email LIKE %s AND status <> 'spam'", (f"flood-{run}-%",)
                    ).fetchone() or (0,)
                    spam = dict(
                        connection.execute("SELECT reason, sum(count) FROM spam_counts GROUP BY reason").fetchall()
                    )
    finally:
        smtp.stop()

    result = flood["result"]
    missing = int(m.group(1)) if (m := re.search(r"^BENCH no_retry_after (\d+)$", result.output, re.M)) else -1
    latencies = [seconds * 1000 for _, _, seconds in real]
    quiet_ms = [seconds * 1000 for _, _, seconds in alone]
    statuses: dict[int, int] = {}
    for _, status, _ in real + alone:
        statuses[status] = statuses.get(status, 0) + 1
    not_stored = sorted(email for email in emails if stored.get(email) in (None, "spam"))
    twice = len(delivered) - len(set(delivered))
    p99 = percentile(latencies, 0.99)
    growth = after_mb - before_mb
    figures: dict[str, Any] = {
        "flood_posts": result.requests, "flood_seconds": round(result.seconds, 1), "flood_rps": round(result.rps),
        "flood_statuses": result.statuses, "flood_503_without_retry_after": missing,
        "flood_socket_errors": {k: v for k, v in result.socket_errors.items() if k != "status"},
        "web_cpu_share_of_a_core": round(web_cpu / result.seconds, 2) if result.seconds else None,
        "flood_p50_ms": result.p50_ms, "flood_p99_ms": result.p99_ms, "flood_posts_stored_as_leads": flood_leads,
        "spam_counts": {reason: int(n) for reason, n in spam.items()},
        "baseline_posts": len(alone), "baseline_p50_ms": round(percentile(quiet_ms, 0.5), 1),
        "baseline_p99_ms": round(percentile(quiet_ms, 0.99), 1),
        "real_posts": len(real), "real_statuses": statuses, "real_p50_ms": round(percentile(latencies, 0.5), 1),
        "real_p99_ms": round(p99, 1), "real_max_ms": round(max(latencies, default=float("nan")), 1),
        "real_stored": len(emails) - len(not_stored), "real_emailed": len(set(delivered)), "real_emailed_twice": twice,
        "database_mb_before": round(before_mb, 1), "database_mb_after": round(after_mb, 1),
    }  # fmt: skip
    checks = [
        (statuses == {202: len(real) + len(alone)} and real, f"every real lead answered 202: {statuses}"),
        (not not_stored, f"every real lead stored, not as spam: {len(emails) - len(not_stored)} of {len(emails)}"),
        (
            set(delivered) == emails and twice == 0,
            f"every real lead emailed once: {len(set(delivered))} of {len(emails)}, {twice} twice",
        ),
        (p99 < P99_MS, f"real leads' p99 {p99:.0f} ms < {P99_MS:.0f} ms"),
        (growth < GROWTH_MB, f"database growth {growth:.1f} MB < {GROWTH_MB:.0f} MB"),
    ]
    return 0 if print_verdicts(figures, checks, args.json) else 1


if __name__ == "__main__":
    raise SystemExit(main())

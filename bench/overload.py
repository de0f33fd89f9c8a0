"""Overload: 4x the saturating connection count against the default web (issue 18, point 4).

What it measures: `leadsync web` as `leadsync web` starts it (one uvicorn process, every check on, Redis +
PostgreSQL with durable defaults) under `wrk -c 256` (64 connections saturate it: bench/intake.py), posting
distinct info-packet forms for --duration seconds. No worker runs: the web alone is what is overloaded.

Targets (each PASS/FAIL): 0 timeouts and 0 socket errors; every answer a 202 or a 503 with Retry-After;
every 202 a committed row (rows >= 202s: a post in flight when wrk stopped may commit unanswered);
p99 < 1 s; web peak RSS < 150 MB. The group-commit queue is bounded by INTAKE_QUEUE_MAX (forms/group_commit.py).

Run from the repository root:
    ./bench/run overload                       # wrk -c 256 for 20 s
    ./bench/run overload --connections 512 --duration 30 --json /tmp/overload.json
"""

from __future__ import annotations

import argparse
import re
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.processes import (
    BENCH,
    Proc,
    RssSampler,
    free_port,
    print_verdicts,
    run_wrk,
    start_services,
    wait_http,
)

SCRIPT = BENCH / "overload.lua"
P99_MS, RSS_MB = 1000.0, 150.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=20)
    parser.add_argument("--connections", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None, metavar="PATH")
    args = parser.parse_args()
    run = secrets.token_hex(3)
    with start_services("leadsync-overload-") as services:
        database = services.database("leadsync")
        # Limits off for the one client address all load comes from; every other check stays on.
        env = services.leadsync_env(database, RATE_LIMIT_PER_IP="", LOG_LEVEL="WARNING")
        home = services.workdir / "leadsync"
        home.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "leadsync", "db", "upgrade"], cwd=home, env=env, check=True)
        port = free_port()
        with Proc(
            "web", [sys.executable, "-m", "leadsync", "web", "--port", str(port)], env, services.workdir, home
        ) as web:
            url = f"http://127.0.0.1:{port}"
            wait_http(f"{url}/readyz", web)
            print(
                f"overload: wrk -t{args.threads} -c{args.connections} -d{args.duration:.0f}s against {url}", flush=True
            )
            with RssSampler({"web": web.pid}) as rss:
                result = run_wrk(
                    url,
                    SCRIPT,
                    args.duration,
                    connections=args.connections,
                    threads=args.threads,
                    script_args=[run],
                    timeout=5,
                )
            peak = rss.largest("web")
        time.sleep(0.5)  # nothing more can commit: the web is stopped
        import psycopg

        with psycopg.connect(services.postgres.dsn("leadsync")) as connection:
            row = connection.execute(f"SELECT count(*) FROM submissions WHERE email LIKE 'lead-{run}-%'").fetchone()
        rows = int(row[0]) if row else 0

    missing = int(m.group(1)) if (m := re.search(r"^BENCH no_retry_after (\d+)$", result.output, re.M)) else -1
    sockets = {k: v for k, v in result.socket_errors.items() if k != "status"}
    accepted, shed = result.count(202), result.count(503)
    other = {code: n for code, n in result.statuses.items() if code not in (202, 503)}
    rss_mb = peak.peak_mb if peak else float("nan")
    figures: dict[str, Any] = {
        "connections": args.connections, "seconds": round(result.seconds, 1), "requests": result.requests,
        "rps": round(result.rps), "accepted_202": accepted, "shed_503": shed, "other_statuses": other,
        "socket_errors": sockets, "p50_ms": result.p50_ms, "p99_ms": result.p99_ms,
        "max_ms": result.latency_ms.get("max"), "rows": rows, "web_peak_rss_mb": round(rss_mb, 1),
        "503_without_retry_after": missing,
    }  # fmt: skip
    checks = [
        (sum(sockets.values()) == 0, f"0 timeouts and socket errors: {sockets}"),
        (
            not other and missing == 0,
            f"every answer a 202 or a 503 with Retry-After: other {other}, {missing} bare 503s",
        ),
        (rows >= accepted, f"every 202 a committed row: {rows:,} rows for {accepted:,} 202s"),
        (result.p99_ms < P99_MS, f"p99 {result.p99_ms:.0f} ms < {P99_MS:.0f} ms"),
        (rss_mb < RSS_MB, f"web peak RSS {rss_mb:.0f} MB < {RSS_MB:.0f} MB"),
    ]
    return 0 if print_verdicts(figures, checks, args.json) else 1


if __name__ == "__main__":
    raise SystemExit(main())

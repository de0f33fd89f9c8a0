"""Scale: intake and worker rates with a million contacts already stored (issue 9, point 4).

What it measures, in one PostgreSQL database (durable settings) and one Redis:
1. on the empty database: the intake rate (`leadsync web --workers 2` under wrk, as bench/intake.py) and
   the worker rate (a backlog drained by one worker, as bench/worker.py);
2. then 1,000,000 contacts are added (`--contacts`), each with a processed submission and a sent packet
   email (3 million rows, made inside PostgreSQL with generate_series, then VACUUM ANALYZE);
3. the same two measurements again.
The rates must stay within 20% of the empty-database figures: every query on the request path and in
the worker goes through an index, none scans a table.

Run from the repository root:
    ./bench/run scale                         # 1,000,000 contacts; intake 15 s; backlog 20,000
    ./bench/run scale --contacts 200000 --duration 10 --backlog 5000

Prints PASS/FAIL for each rate and exits 1 on a miss.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

from bench import worker as worker_bench
from bench.intake import run_leadsync
from bench.processes import start_services

TOLERANCE = 0.20


def intake_rate(services: object, database: str, args: argparse.Namespace, run_id: str) -> float:
    options = SimpleNamespace(duration=args.duration, warmup=3.0, connections=64, threads=2)
    measured = run_leadsync(services, options, run_id, database=database, drain=False)  # type: ignore[arg-type]
    if measured.wrk is None or measured.wrk.errors():
        raise RuntimeError(f"intake run failed: {measured.failure or measured.wrk}")
    print(f"  intake: {measured.wrk.rps:,.0f} req/s, p99 {measured.wrk.p99_ms:.1f} ms", flush=True)
    return measured.wrk.rps


def set_aside(database: str, redis_url: str) -> None:
    """Drop what an intake run left for the worker (its pending rows and their messages), so the worker's
    measurement that follows drains its own backlog only."""
    import psycopg
    import redis

    with psycopg.connect(database.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as connection:
        connection.execute("UPDATE submissions SET status = 'spam', spam_reason = 'bench' WHERE status = 'pending'")
    redis.Redis.from_url(redis_url).delete("intake")


def worker_rate(env: dict[str, str], workdir: Path, backlog: int, tag: str) -> float:
    result = worker_bench.measure(env, workdir, backlog, batch=100, tag=tag)
    print(f"  worker: {backlog:,} submissions in {result['seconds']:.1f} s = {result['per_second']:,.0f}/s", flush=True)
    return result["per_second"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contacts", type=int, default=1_000_000)
    parser.add_argument("--duration", type=float, default=15, help="seconds of intake load per measurement")
    parser.add_argument("--backlog", type=int, default=20_000, help="submissions the worker drains per measurement")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()

    results: dict[str, float] = {}
    with start_services("leadsync-scale-") as services:
        database = services.database("leadsync")
        env = {"DATABASE_URL": database, "BROKER_URL": services.redis_url(0)}
        workdir = services.workdir
        worker_bench.migrate(worker_bench.leadsync_env(env, workdir), workdir)
        print("empty database:", flush=True)
        results["intake_empty"] = intake_rate(services, database, args, "scale0")
        set_aside(database, env["BROKER_URL"])
        results["worker_empty"] = worker_rate(env, workdir, args.backlog, "a")
        print(f"adding {args.contacts:,} contacts (+ a submission and an email each) ...", flush=True)
        started = time.monotonic()
        worker_bench.seed_contacts(database, args.contacts)
        results["seed_seconds"] = time.monotonic() - started
        print(f"  done in {results['seed_seconds']:.0f} s", flush=True)
        print(f"with {args.contacts:,} contacts:", flush=True)
        results["intake_full"] = intake_rate(services, database, args, "scale1")
        set_aside(database, env["BROKER_URL"])
        results["worker_full"] = worker_rate(env, workdir, args.backlog, "b")

    failed = False
    for name in ("intake", "worker"):
        empty, full = results[f"{name}_empty"], results[f"{name}_full"]
        ok = full >= empty * (1 - TOLERANCE)
        failed |= not ok
        print(
            f"{'PASS' if ok else 'FAIL'} {name}: {full:,.0f}/s with {args.contacts:,} contacts vs {empty:,.0f}/s "
            f"empty ({(full / empty - 1) * 100:+.0f}%, allowed -{TOLERANCE:.0%})"
        )
    if args.json:
        args.json.write_text(json.dumps({**results, "contacts": args.contacts}, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

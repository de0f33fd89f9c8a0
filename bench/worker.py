"""Worker throughput: submissions processed a second from a backlog (issue 9, point 2).

What it measures: a backlog of stored submissions (20,000 by default; a quarter are repeat visits of
people already in the backlog, 30% newsletter sign-ups) waiting in PostgreSQL, published to Redis the
way the web publishes them (one message for each group commit, `--batch` submissions a message);
then one `leadsync worker --concurrency 2` (the production default on 2 cores) drains the intake
queue: dedupe by email, merge, the packet / confirmation email claim, the contact marked for CRM sync.
The clock runs from the first publish until no submission is pending; worker start-up is not timed.
Emails are only claimed (queued) here, not sent: `bench/end_to_end.py` measures sending.

PostgreSQL runs with its durable defaults (fsync and synchronous commit on).

Run from the repository root:
    ./bench/run worker                          # 20,000 submissions
    ./bench/run worker --backlog 5000 --batch 50
    ./bench/run worker --contacts 1000000       # with a million contacts already stored (bench/scale.py)

Target: at least 300 submissions/s. Prints PASS/FAIL and exits 1 on a miss.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.processes import BENCH_FORM_TOKEN_SECRET, RssSampler, start_services

TARGET_PER_SECOND = 300


def leadsync_env(services: dict[str, str], workdir: Path, **extra: str) -> dict[str, str]:
    """The environment for leadsync processes and for this process's own leadsync imports."""
    env = {
        **services,
        "VAR_DIR": str(workdir / "var"),
        "LOG_LEVEL": "WARNING",  # a log line a submission would be part of what is measured
        "RATE_LIMIT_PER_IP": "",
        "RATE_LIMIT_PER_EMAIL": "",
        # No SMTP_HOST: the embedded outbox, which only dev mode may start with (README, Commands).
        "DEV_MODE": "1",
        "SMTP_HOST": "",
        "FORM_TOKEN_SECRET": BENCH_FORM_TOKEN_SECRET,
        **extra,
    }
    os.environ.update(env)  # leadsync's settings are read from the environment, here too
    return {**os.environ, **env}


def migrate(env: dict[str, str], workdir: Path) -> None:
    subprocess.run([sys.executable, "-m", "leadsync", "db", "upgrade"], cwd=workdir, env=env, check=True)


def seed_contacts(database_url: str, count: int) -> float:
    """`count` contacts already synced, each with one processed submission and one sent packet; seconds taken.

    Generated inside PostgreSQL (generate_series), so a million rows take seconds, not minutes.
    """
    import psycopg

    started = time.monotonic()
    dsn = database_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn, autocommit=True) as connection:
        connection.execute(
            """
            INSERT INTO contacts (email, first_name, last_name, field_times, lifecycle_stage, newsletter_status,
                first_seen_at, last_seen_at, submissions_count, crm_status, crm_version, crm_synced_version,
                crm_changed_at, crm_attempts, hubspot_id)
            SELECT 'existing' || n || '@clinic-visitors.example.org', 'First' || n, 'Last' || n, '{}', 'lead',
                'none', now() - interval '90 days', now() - interval '30 days', 1, 'synced', 1, 1,
                now() - interval '30 days', 1, (100000 + n)::text
            FROM generate_series(1, %s) AS n
            """,
            (count,),
        )
        connection.execute(
            """
            INSERT INTO submissions (id, form, email, fields, raw, utm, consent, received_at, status, processed_at,
                contact_id)
            SELECT md5('s' || c.id), 'info_packet', c.email, '{}', '{}', '{}', '{}', c.last_seen_at, 'processed',
                c.last_seen_at, c.id
            FROM contacts c WHERE c.email LIKE 'existing%%'
            """
        )
        connection.execute(
            """
            INSERT INTO email_sends (id, kind, contact_id, submission_id, message_id, status, attempts, created_at,
                sent_at)
            SELECT md5('e' || c.id), 'info_packet', c.id, md5('s' || c.id), '<' || md5('e' || c.id) || '@bench>',
                'sent', 1, c.last_seen_at, c.last_seen_at
            FROM contacts c WHERE c.email LIKE 'existing%%'
            """
        )
        connection.execute("VACUUM ANALYZE")
    return time.monotonic() - started


def seed_backlog(count: int, tag: str = "", repeat_share: float = 0.25, newsletter_share: float = 0.3) -> list[str]:
    """Store `count` pending submissions as the web would (group commits of 200); their ids in order.

    `tag` goes into the addresses, so backlogs of two runs on one database are different people."""
    from leadsync.storage.db import get_sessionmaker
    from leadsync.storage.submissions import NewSubmission, store_submissions

    people = max(1, round(count * (1 - repeat_share)))
    batch: list[NewSubmission] = []
    ids: list[str] = []
    for n in range(count):
        person = n % people
        newsletter = n % 10 < newsletter_share * 10
        fields: dict[str, Any] = {"first_name": f"Ann{person}", "last_name": "Lee"}
        if not newsletter:
            fields.update({"phone": "+14155550100", "interest": "exosomes"})
        batch.append(
            NewSubmission(
                form="newsletter" if newsletter else "info_packet",
                email=f"visitor{tag}{person}@clinic-visitors.example.org",
                fields=fields,
                raw=dict(fields),
                ip="203.0.113.7",
                page_url="https://clinic.example/exosome-therapy",
                consent={"newsletter": newsletter, "text_version": "2026-11"},
            )
        )
        if len(batch) == 200 or n == count - 1:
            with get_sessionmaker()() as session:
                ids.extend(outcome.submission_id for outcome in store_submissions(session, batch))
            batch = []
    return ids


def pending_count() -> int:
    from sqlalchemy import func, select

    from leadsync.storage.db import session_scope
    from leadsync.storage.models import Submission, SubmissionStatus

    with session_scope() as session:
        return session.scalar(select(func.count()).where(Submission.status == SubmissionStatus.PENDING)) or 0


@contextmanager
def running_worker(env: dict[str, str], workdir: Path, queues: str = "intake") -> Iterator[subprocess.Popen[bytes]]:
    """`leadsync worker --concurrency 2 -Q queues`, ready to take tasks; stopped on exit."""
    log = workdir / "worker.log"
    with log.open("wb") as output:
        worker = subprocess.Popen(
            [sys.executable, "-m", "leadsync", "worker", "--concurrency", "2", "-Q", queues, "-n", "bench@%h"],
            cwd=workdir,
            env={**env, "LOG_LEVEL": "INFO"},  # Celery's " ready." line is an INFO line
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 60
            while b" ready." not in log.read_bytes():
                if worker.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"worker did not start:\n{log.read_text()[-3000:]}")
                time.sleep(0.1)
            yield worker
        finally:
            worker.terminate()
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()


def drain(ids: list[str], batch: int, env: dict[str, str], workdir: Path, timeout: float = 600) -> dict[str, float]:
    """Publish `ids` in messages of `batch` to a running worker; time until none is pending."""
    from leadsync.worker import enqueue

    with running_worker(env, workdir) as worker, RssSampler({"worker": worker.pid}) as rss:
        started = time.monotonic()
        for index in range(0, len(ids), batch):
            enqueue.enqueue_submissions(ids[index : index + batch])
        published = time.monotonic() - started
        while (left := pending_count()) > 0:
            if time.monotonic() - started > timeout:
                raise RuntimeError(f"{left} submissions still pending after {timeout}s")
            time.sleep(0.1)
        elapsed = time.monotonic() - started
    peak = max((p.peak_mb for p in rss.of("worker")), default=0.0)
    return {"seconds": elapsed, "per_second": len(ids) / elapsed, "publish_seconds": published, "worker_rss_mb": peak}


def measure(services: dict[str, str], workdir: Path, backlog: int, batch: int, tag: str = "") -> dict[str, float]:
    """Seed `backlog` submissions into the database in `services` and drain them with one worker."""
    from leadsync.storage.db import dispose_engines

    env = leadsync_env(services, workdir)
    dispose_engines()
    ids = seed_backlog(backlog, tag)
    result = drain(ids, batch, env, workdir)
    from sqlalchemy import func, select

    from leadsync.storage.db import session_scope
    from leadsync.storage.models import Contact, EmailSend

    with session_scope() as session:
        result["contacts"] = session.scalar(select(func.count()).select_from(Contact)) or 0
        result["emails_claimed"] = session.scalar(select(func.count()).select_from(EmailSend)) or 0
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backlog", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=100, help="submissions a message (the web's group commit)")
    parser.add_argument("--contacts", type=int, default=0, help="contacts already in the database")
    parser.add_argument("--json", type=Path, help="write the result here")
    args = parser.parse_args()

    with start_services("leadsync-worker-") as running:
        services = {"DATABASE_URL": running.database("bench"), "BROKER_URL": running.redis_url(0)}
        workdir = running.workdir
        migrate(leadsync_env(services, workdir), workdir)
        if args.contacts:
            print(
                f"seeding {args.contacts:,} contacts ... {seed_contacts(services['DATABASE_URL'], args.contacts):.0f}s"
            )
        result = measure(services, workdir, args.backlog, args.batch)

    result.update(backlog=args.backlog, batch=args.batch, preloaded_contacts=args.contacts)
    print(
        f"worker: {args.backlog:,} submissions ({result['contacts'] - args.contacts:,.0f} new people, "
        f"{result['emails_claimed']:,.0f} emails claimed) in {result['seconds']:.1f}s = "
        f"{result['per_second']:,.0f}/s; peak worker RSS {result['worker_rss_mb']:.0f} MB"
    )
    ok = result["per_second"] >= TARGET_PER_SECOND
    print(f"{'PASS' if ok else 'FAIL'}: at least {TARGET_PER_SECOND} submissions/s")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

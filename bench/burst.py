"""The burst (issue 18, target 1): 3,000 newsletter sign-ups + 1,000 packet requests posted within 10 s.

What it measures, with the default topology (one `leadsync web`, one `leadsync worker` with beat, default
concurrency = CPU count, its reserved CRM process on): from the last post's 202 to

- **every contact in HubSpot** (the emulator's commit of each record; target: within 15 s),
- **every email received** by the SMTP sink (the 250 after DATA; target: within 30 s),

and the HubSpot calls: batch upserts against the minimum ceil(contacts / 100) (target: within 10%), other
calls (notes), 429s (target: 0). Everything else is as in bench/end_to_end.py, whose stamping SMTP sink and
HubSpot emulator it reuses: Redis and a durable PostgreSQL (fsync on), the SMTP sink and the HubSpot emulator
(HubSpot's 100 requests per rolling 10 s, or --hubspot-rate-limit 190 for the paid tiers) in this process,
the per-IP rate limit off (all load comes from 127.0.0.1), the per-email limit at its default.

Load: distinct people, a packet request every fourth post, scheduled open loop at (newsletter + packets) /
--post-seconds; a 503 (the web shedding load) is retried after its Retry-After with the same
Idempotency-Key, as the snippet does. The clock for the targets starts at the last 202.

    ./bench/run burst                               # 3,000 + 1,000 in 10 s, HubSpot at 100 / 10 s
    ./bench/run burst --hubspot-rate-limit 190 --json /tmp/burst.json
    .venv/bin/python -m bench.burst --newsletter 300 --packets 100 --post-seconds 2   # a quick look

Exit status 1 on any FAIL.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import json
import math
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.end_to_end import MEASURED_TOKEN, SETUP_TOKEN, StampingHubSpot, Stamps, _bootstrap, _on_sigterm
from bench.processes import print_verdicts
from bench.raw_http import RawClient
from leadsync.config import Settings
from tests.support.services import PostgresServer, RedisServer, SmtpSink
from tests.support.stack import LeadsyncStack, services_env

TARGET_CRM_SECONDS, TARGET_EMAIL_SECONDS, UPSERT_SLACK = 15.0, 30.0, 0.10
BATCH = 100  # HubSpot's batch upsert takes at most 100 contacts
RETRY_AFTER_CAP = 10.0  # seconds; the snippet waits 1-10 s


class StampingSink(SmtpSink):
    """The aiosmtpd sink, noting when each recipient's message was accepted, and nothing else: the suite's sink
    parses every message (~3 ms of this process's CPU each), which the load generator needs under a burst."""

    def __init__(self) -> None:
        super().__init__()
        self.stamps = Stamps()

    def _deliver(self, envelope: Any) -> None:  # aiosmtpd's DATA hook, before the 250 goes out
        at = time.monotonic()
        for recipient in envelope.rcpt_tos:
            self.stamps.note(recipient, at)


@dataclass
class Post:
    form: str
    email: str
    due: float = 0.0
    answered: float | None = None
    status: str = "not sent"
    tries: int = 0

    def payload(self) -> dict[str, Any]:
        if self.form == "newsletter":
            return {"email": self.email}
        return {"email": self.email, "first_name": "Burst", "interest": "knee pain"}


async def _send(client: RawClient, post: Post) -> None:
    headers = {"Idempotency-Key": uuid.uuid4().hex}
    body = json.dumps(post.payload()).encode()
    while True:
        post.tries += 1
        try:
            status, answer = await client.post(f"/forms/{post.form}", body, headers)
        except OSError:
            post.answered, post.status = time.monotonic(), "connection error"
            return
        post.answered, post.status = time.monotonic(), str(status)
        if status != 503 or post.tries >= 5:
            return
        await asyncio.sleep(min(RETRY_AFTER_CAP, float(answer.get("retry-after") or 1)))


async def _burst(url: str, posts: list[Post], seconds: float, connections: int) -> None:
    """Post i at start + i * seconds / len(posts), whatever happened to the earlier ones (open loop), over at most
    `connections` connections (a post waits for a free one: the web's own limits are not what is measured)."""
    client = RawClient(url, connections)
    try:
        start = time.monotonic() + 0.2
        tasks = []
        for index, post in enumerate(posts):
            post.due = start + index * seconds / len(posts)
            delay = post.due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(_send(client, post)))
        await asyncio.gather(*tasks)
    finally:
        await client.close()


def _burst_elsewhere(url: str, posts: list[Post], seconds: float, connections: int) -> None:
    """`_burst` in a process of its own: beside the SMTP sink's and the emulator's threads, the client's event
    loop got the GIL in 5 ms turns, which measured the harness, not leadsync. The posts come back with their
    answers (time.monotonic is one clock for every process on Linux)."""
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
        posts[:] = pool.submit(_post_all, url, posts, seconds, connections).result()


def _post_all(url: str, posts: list[Post], seconds: float, connections: int) -> list[Post]:
    cpu, wall = time.process_time(), time.monotonic()
    asyncio.run(_burst(url, posts, seconds, connections))
    used, took = time.process_time() - cpu, time.monotonic() - wall
    print(f"load generator (own process): {used:.1f} s CPU in {took:.1f} s", flush=True)
    return posts


def _wait(emails: set[str], smtp: StampingSink, hub: StampingHubSpot, timeout: float) -> tuple[set[str], set[str]]:
    """Wait until every address has its email and its HubSpot contact; (without mail, without contact)."""
    no_mail, no_contact = set(emails), set(emails)
    deadline = last_report = time.monotonic()
    deadline += timeout
    while (no_mail or no_contact) and time.monotonic() < deadline:
        no_mail = {e for e in no_mail if smtp.stamps.first(e) is None}
        no_contact = {e for e in no_contact if hub.created_at.first(e) is None}
        if time.monotonic() - last_report > 5:
            last_report = time.monotonic()
            n = len(emails)
            print(f"  waiting: {n - len(no_mail):,}/{n:,} emails, {n - len(no_contact):,}/{n:,} contacts", flush=True)
        time.sleep(0.05)
    return no_mail, no_contact


def _quantiles(values: list[float], qs: tuple[float, ...]) -> list[float]:
    return [values[min(len(values) - 1, int(q * len(values)))] if values else 0.0 for q in qs]


def analyse(
    posts: list[Post], smtp: StampingSink, hub: StampingHubSpot, before: Counter[str], notes: bool
) -> tuple[dict[str, Any], list[tuple[bool, str]]]:
    accepted = [p for p in posts if p.status == "202" and p.answered is not None]
    n = len(accepted)
    first_post = min(p.due for p in posts)
    last_post = max((p.answered for p in accepted), default=first_post)
    mail, created = smtp.stamps.snapshot(), hub.created_at.snapshot()
    ours = {p.email for p in posts}
    mail_times = [mail[p.email][0] for p in accepted if p.email in mail]
    contact_times = [created[p.email][0] for p in accepted if p.email in created]
    copies = Counter({e: len(mail.get(e, [])) for e in ours})
    upserts = hub.count("batch/upsert") - before["upserts"]
    calls = hub.count() - before["calls"]
    minimum = math.ceil(n / BATCH)
    figures: dict[str, Any] = {
        "posts": len(posts),
        "answers": dict(Counter(p.status for p in posts)),
        "posts_retried_after_503": sum(p.tries > 1 for p in posts),
        "seconds_first_post_to_last_202": round(last_post - first_post, 2),
        "seconds_last_post_due": round(max(p.due for p in posts) - first_post, 2),
        "answer_ms_p50_p99_max": [
            round(1000 * q, 1) for q in _quantiles(sorted(p.answered - p.due for p in accepted), (0.5, 0.99, 1.0))
        ],
        "emails_received": sum(1 for e in ours if copies[e]),
        "emails_twice": sum(1 for e in ours if copies[e] > 1),
        "contacts_created": sum(1 for e in ours if e in created),
        "contacts_created_twice": sum(1 for e in ours if len(created.get(e, [])) > 1),
        "seconds_last_202_to_every_contact": round(max(contact_times) - last_post, 2) if contact_times else None,
        "seconds_last_202_to_every_email": round(max(mail_times) - last_post, 2) if mail_times else None,
        "hubspot_calls": calls,
        "hubspot_batch_upserts": upserts,
        "hubspot_upserts_minimum": minimum,
        "hubspot_429s": hub.count(status=429) - before["429"],
        "hubspot_notes_on": notes,
    }
    crm, email = figures["seconds_last_202_to_every_contact"], figures["seconds_last_202_to_every_email"]
    checks = [
        (n == len(posts), f"{n:,} of {len(posts):,} posts answered 202"),
        (
            figures["contacts_created"] == n and crm is not None and crm <= TARGET_CRM_SECONDS,
            f"every contact in HubSpot {crm} s after the last 202 (<= {TARGET_CRM_SECONDS:g} s): "
            f"{figures['contacts_created']:,} of {n:,}",
        ),
        (
            figures["emails_received"] == n and email is not None and email <= TARGET_EMAIL_SECONDS,
            f"every email received {email} s after the last 202 (<= {TARGET_EMAIL_SECONDS:g} s): "
            f"{figures['emails_received']:,} of {n:,}",
        ),
        (
            upserts <= math.floor(minimum * (1 + UPSERT_SLACK)),
            f"{upserts} batch upserts for {n:,} contacts, minimum {minimum} (<= +{UPSERT_SLACK:.0%})",
        ),
        (figures["hubspot_429s"] == 0, f"{figures['hubspot_429s']} HubSpot 429s (0)"),
        (
            figures["emails_twice"] == 0 and figures["contacts_created_twice"] == 0,
            f"nothing twice: {figures['emails_twice']} people emailed twice, "
            f"{figures['contacts_created_twice']} contacts created twice",
        ),
    ]
    return figures, checks


def arithmetic(contacts: int, rate_limit: int, notes: bool) -> str:
    """The HubSpot budget the burst needs, against its limit."""
    batches = math.ceil(contacts / BATCH)
    per_batch = 2 if notes else 1
    calls = batches * per_batch
    what = "1 upsert + 1 notes call" if notes else "1 upsert"
    fits = "fits in one window" if calls <= rate_limit else f"needs {math.ceil(calls / rate_limit)} windows"
    return (
        f"HubSpot arithmetic: {contacts:,} contacts = {batches} batches of <= {BATCH} x ({what}) = {calls} calls; "
        f"at {rate_limit} requests per rolling 10 s that {fits}"
    )


def main() -> int:
    defaults = Settings.model_fields
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--newsletter", type=int, default=3000, help="newsletter sign-ups")
    parser.add_argument("--packets", type=int, default=1000, help="information packet requests")
    parser.add_argument("--post-seconds", type=float, default=10.0, help="all posts scheduled within this")
    parser.add_argument("--connections", type=int, default=64, help="client connections (as bench/intake.py)")
    parser.add_argument("--concurrency", type=int, default=os.cpu_count() or 2, help="default: CPU count")
    parser.add_argument("--hubspot-rate-limit", type=int, default=100, help="HubSpot requests per 10 s (or 190)")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds after the last post to wait")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds to keep watching for duplicates")
    parser.add_argument("--pg-fsync-off", action="store_true", help="PostgreSQL as in the test suite: NOT durable")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs) even on success")
    args = parser.parse_args()

    signal.signal(signal.SIGTERM, _on_sigterm)
    run = str(int(time.time()))
    total = args.newsletter + args.packets
    # The packet requests spread evenly through the burst (one in four by default), distinct people throughout.
    posts = [
        Post("info-packet" if (i + 1) * args.packets // total > i * args.packets // total else "newsletter",
             f"burst{i}-{run}@example.org")
        for i in range(total)
    ]  # fmt: skip
    notes = bool(defaults["hubspot_notes"].default)
    workdir = Path(tempfile.mkdtemp(prefix="leadsync-burst-"))
    keep, figures, checks = args.keep, {}, []
    with contextlib.ExitStack() as cleanup:
        try:
            redis = cleanup.enter_context(RedisServer())
            postgres = cleanup.enter_context(PostgresServer(durable=not args.pg_fsync_off))
            smtp = cleanup.enter_context(StampingSink())
            hub = cleanup.enter_context(
                StampingHubSpot(token=SETUP_TOKEN, rate_limit=args.hubspot_rate_limit, record_bodies=False)
            )
            env = {
                "VAR_DIR": str(workdir / "var"),
                "DATABASE_URL": postgres.create_database("leadsync_burst"),
                "BROKER_URL": redis.url,
                **services_env(smtp, hub, token=MEASURED_TOKEN),
                # The production defaults, not the test stack's quick ones.
                "CRM_FLUSH_INTERVAL_SECONDS": str(defaults["crm_flush_interval_seconds"].default),
                "HUBSPOT_RATE_LIMIT": str(args.hubspot_rate_limit),
                "RATE_LIMIT_PER_IP": "",
                "RATE_LIMIT_PER_EMAIL": str(defaults["rate_limit_per_email"].default),
                "LOG_LEVEL": "INFO",  # the default; the stack waits for the worker's " ready." line
            }
            stack = LeadsyncStack(env, workdir, workers=1, concurrency=args.concurrency)
            cleanup.callback(stack.stop)
            _bootstrap(stack, hub)
            stack.start()
            print(
                f"leadsync on Redis + PostgreSQL (fsync {'off' if args.pg_fsync_off else 'on'}): 1 web, 1 worker "
                f"(concurrency {args.concurrency} + its reserved CRM process) + beat; HubSpot emulator at "
                f"{args.hubspot_rate_limit} requests / 10 s; load average {os.getloadavg()[0]:.2f}"
            )
            print(arithmetic(len(posts), args.hubspot_rate_limit, notes))
            warm = [Post("info-packet", f"warmup{i}-{run}@example.org") for i in range(3)]
            _burst_elsewhere(stack.url, warm, 0.1, 3)
            if _wait({p.email for p in warm}, smtp, hub, 60) != (set(), set()):
                raise RuntimeError("the warm-up people got no email or no HubSpot contact within 60 s")
            before = Counter(calls=hub.count(), upserts=hub.count("batch/upsert"), **{"429": hub.count(status=429)})
            print(
                f"burst: {args.newsletter:,} newsletter sign-ups + {args.packets:,} packet requests "
                f"in {args.post_seconds:g} s",
                flush=True,
            )
            cpu, wall = time.process_time(), time.monotonic()
            _burst_elsewhere(stack.url, posts, args.post_seconds, args.connections)
            print("posted; waiting for every email and contact", flush=True)
            _wait({p.email for p in posts if p.status == "202"}, smtp, hub, args.timeout)
            harness = (time.process_time() - cpu) / (time.monotonic() - wall)
            time.sleep(args.settle)
            figures, checks = analyse(posts, smtp, hub, before, notes)
            figures["harness_cpu_share_of_one_core"] = round(harness, 2)
            figures["load_average_1m_after"] = round(os.getloadavg()[0], 2)
        except BaseException:
            keep = True
            print(f"benchmark aborted; logs kept in {workdir}", file=sys.stderr)
            raise
    figures["config"] = {
        "newsletter": args.newsletter, "packets": args.packets, "post_seconds": args.post_seconds,
        "worker_concurrency": args.concurrency, "client_connections": args.connections,
        "hubspot_rate_limit_per_10s": args.hubspot_rate_limit,
        "arithmetic": arithmetic(len(posts), args.hubspot_rate_limit, notes),
    }  # fmt: skip
    passed = print_verdicts(figures, checks, args.json)
    if keep or not passed:
        print(f"logs: {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())

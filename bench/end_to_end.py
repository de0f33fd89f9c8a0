"""End to end (issue 9, point 3): from a form post's 202 to the packet email and to the HubSpot contact.

What it measures: at a steady, open-loop rate (default 50 submissions/s for 60 s) of distinct people posting
POST /forms/info-packet, the time from the moment each 202 reached the client to

- **email**: the moment the SMTP server accepted that person's information-packet email (the 250 after DATA);
- **CRM**: the moment that person's contact was written at the HubSpot emulator (the batch upsert committing it).

It reports p50/p95/max of both, the counts (posts sent, 202s, emails, contacts, duplicates: each person must
get exactly one packet email and one HubSpot contact) and PASS/FAIL against the targets: p95 under 2 s to the
email, under 15 s to the CRM, everyone delivered, nothing twice. Exit status 1 on any miss. For diagnosis it
also shows the request time (post to 202), how far the load generator fell behind its schedule, HubSpot calls
and 429s, delivered emails/contacts per second against the offered rate, and this process's CPU share;
--json writes all of it plus a per-second timeline (202s, emails, contacts).

The setup is a small production, all started by this script and stopped on exit (also on failure or Ctrl-C):
Redis and PostgreSQL (tests/support/services.py; PostgreSQL with its durable defaults, fsync and synchronous
commit on, unless --pg-fsync-off), the SMTP sink and the HubSpot emulator in this process
(the emulator enforcing HubSpot's Free/Starter limit of 100 requests per rolling 10 s; the custom properties
are created first by `leadsync hubspot bootstrap` with another app's token, as at deployment), and leadsync
through tests/support/stack.py: one `leadsync web`, one `leadsync worker --concurrency 2 --beat`, with the
production defaults (CRM flush every 2 s) except the per-IP rate limit, which is off because all the load
comes from 127.0.0.1.

Timing: every stamp is `time.monotonic()` in this one process. The 202 is stamped when the response arrives
at the load generator (httpx.AsyncClient, posts scheduled at fixed times, never waiting for earlier answers);
the email is stamped by a subclass of SmtpSink when it accepts the message; the contact by a subclass of
the emulator when it commits the record. No polling: resolution is the clock's (well under 1 ms), but the load
generator shares this process (and its GIL) with the SMTP and HubSpot servers, so a stamp can be late by
a few milliseconds when they are busy.

    .venv/bin/python -m bench.end_to_end                      # 50/s for 60 s
    .venv/bin/python -m bench.end_to_end --rate 20 --duration 10 --json var/e2e.json
    ./bench/run end_to_end                                     # the same, after installing what is missing

Targets (issue 9): p95 < 2 s from the 202 to the email, p95 < 15 s from the 202 to the CRM contact.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from email.parser import BytesHeaderParser
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

import httpx

from leadsync.config import Settings
from tests.support.hubspot_emulator import HubSpotEmulator
from tests.support.services import PostgresServer, RedisServer, SmtpSink
from tests.support.stack import LeadsyncStack, services_env

ROOT = Path(__file__).resolve().parents[1]

MEASURED_TOKEN, SETUP_TOKEN = "e2e-bench-app", "e2e-setup-app"
TARGET_EMAIL_P95, TARGET_CRM_P95 = 2.0, 15.0
PACKET_SUBJECT = "Your FREE information packet"  # config/emails.toml [info_packet]
FORM = "info-packet"


# --------------------------------------------------------------------------- stamping servers


class Stamps:
    """Monotonic times at which each key (an email address) was seen, from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._times: dict[str, list[float]] = defaultdict(list)

    def note(self, key: str, at: float) -> None:
        with self._lock:
            self._times[key.strip().lower()].append(at)

    def snapshot(self) -> dict[str, list[float]]:
        with self._lock:
            return {key: list(times) for key, times in self._times.items()}

    def first(self, key: str) -> float | None:
        with self._lock:
            times = self._times.get(key)
            return times[0] if times else None


class StampingSmtpSink(SmtpSink):
    """SmtpSink that notes, per recipient, when it accepted a packet email (and any other email)."""

    def __init__(self) -> None:
        super().__init__()
        self.packets = Stamps()
        self.others = Stamps()
        self._headers = BytesHeaderParser(policy=default_policy)

    def _deliver(self, envelope: Any) -> None:  # aiosmtpd's DATA hook, before the 250 goes out
        super()._deliver(envelope)
        at = time.monotonic()
        raw: bytes = envelope.original_content or envelope.content
        subject = str(self._headers.parsebytes(raw).get("subject", ""))
        stamps = self.packets if subject.startswith(PACKET_SUBJECT) else self.others
        for recipient in envelope.rcpt_tos:
            stamps.note(recipient, at)


class StampingHubSpot(HubSpotEmulator):
    """The HubSpot emulator, noting when a contact with each email was created (and later written again)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.created_at = Stamps()  # (the emulator's own `created` counts records)
        self.updated_at = Stamps()

    def _commit(self, write: Any, *, upsert: bool, **options: Any) -> dict[str, Any]:  # under the emulator's lock
        out = super()._commit(write, upsert=upsert, **options)
        at = time.monotonic()
        email = self.contacts[out["id"]]["properties"].get("email")
        if email:
            (self.created_at if write.record_id is None else self.updated_at).note(email, at)
        return out


# --------------------------------------------------------------------------- load


@dataclass
class Person:
    email: str
    first_name: str
    due: float = 0.0  # scheduled send (monotonic)
    sent: float | None = None
    answered: float | None = None  # when the 202 (or other answer) arrived
    status: str = "not sent"

    def payload(self) -> dict[str, Any]:
        return {"email": self.email, "first_name": self.first_name, "last_name": "Bench", "interest": "knee pain"}


async def _post(client: httpx.AsyncClient, person: Person) -> None:
    person.sent = time.monotonic()
    try:
        response = await client.post(f"/forms/{FORM}", json=person.payload())
    except httpx.HTTPError as error:
        person.answered, person.status = time.monotonic(), type(error).__name__
        return
    person.answered, person.status = time.monotonic(), str(response.status_code)


async def _open_loop(url: str, people: list[Person], rate: float, timeout: float) -> None:
    """Send person i at start + i/rate whatever happened to the earlier posts (open loop)."""
    limits = httpx.Limits(max_connections=2000, max_keepalive_connections=200)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client:
        start = time.monotonic() + 0.2
        tasks: list[asyncio.Task[None]] = []
        for index, person in enumerate(people):
            person.due = start + index / rate
            delay = person.due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(_post(client, person)))
        await asyncio.gather(*tasks)


def _warm_up(stack: LeadsyncStack, smtp: StampingSmtpSink, hub: StampingHubSpot, count: int, run: str) -> None:
    """A few people through the whole pipeline first, not measured: a running service is warm."""
    emails = [f"warmup{i}-{run}@example.org" for i in range(count)]
    for email in emails:
        response = stack.post(FORM, {"email": email, "first_name": "Warm"})
        if response.status_code != 202:
            raise RuntimeError(f"warm-up post answered {response.status_code}: {response.text[:300]}")
    deadline = time.monotonic() + 60
    while not all(smtp.packets.first(e) and hub.created_at.first(e) for e in emails):
        if time.monotonic() > deadline:
            raise RuntimeError("warm-up people got no email or no HubSpot contact within 60 s")
        time.sleep(0.05)


def _wait_delivered(people: list[Person], smtp: StampingSmtpSink, hub: StampingHubSpot, timeout: float) -> None:
    """Wait until every accepted person has an email and a contact, or `timeout` seconds."""
    accepted = [p.email for p in people if p.status == "202"]
    no_mail, no_contact = set(accepted), set(accepted)  # only these are looked at again
    deadline = time.monotonic() + timeout
    last_report = time.monotonic()
    while (no_mail or no_contact) and time.monotonic() < deadline:
        no_mail = {e for e in no_mail if smtp.packets.first(e) is None}
        no_contact = {e for e in no_contact if hub.created_at.first(e) is None}
        if time.monotonic() - last_report > 5:
            last_report = time.monotonic()
            n = len(accepted)
            print(f"  waiting: {n - len(no_mail)}/{n} emails, {n - len(no_contact)}/{n} contacts", flush=True)
        time.sleep(0.05)


# --------------------------------------------------------------------------- results


def percentile(values: list[float], share: float) -> float:
    """Nearest-rank percentile (share in 0..1) of a non-empty list."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


@dataclass
class Latency:
    n: int
    p50: float | None
    p95: float | None
    max: float | None
    mean: float | None

    @classmethod
    def of(cls, values: list[float]) -> Latency:
        if not values:
            return cls(0, None, None, None, None)
        return cls(
            len(values), percentile(values, 0.5), percentile(values, 0.95), max(values), sum(values) / len(values)
        )

    def row(self, name: str) -> str:
        def cell(value: float | None) -> str:
            return "-" if value is None else f"{value:.3f}"

        return f"| {name} | {self.n:,} | {cell(self.p50)} | {cell(self.p95)} | {cell(self.max)} | {cell(self.mean)} |"


@dataclass
class Results:
    config: dict[str, Any]
    counts: dict[str, Any] = field(default_factory=dict)
    latency: dict[str, Latency] = field(default_factory=dict)
    checks: list[tuple[bool, str]] = field(default_factory=list)
    timeline: list[dict[str, int]] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(ok for ok, _ in self.checks)

    def as_json(self) -> dict[str, Any]:
        return {
            "config": self.config,
            "counts": self.counts,
            "latency_seconds": {name: vars(value) for name, value in self.latency.items()},
            "checks": [{"pass": ok, "check": text} for ok, text in self.checks],
            "pass": self.passed,
            "timeline_per_second": self.timeline,
        }


def analyse(
    people: list[Person],
    smtp: StampingSmtpSink,
    hub: StampingHubSpot,
    config: dict[str, Any],
    calls_before: Counter[str],
) -> Results:
    ours = {p.email for p in people}
    accepted = [p for p in people if p.status == "202" and p.answered is not None]
    packets, created, updated = smtp.packets.snapshot(), hub.created_at.snapshot(), hub.updated_at.snapshot()
    other_mail = smtp.others.snapshot()

    to_email = [packets[p.email][0] - p.answered for p in accepted if p.email in packets]
    to_crm = [created[p.email][0] - p.answered for p in accepted if p.email in created]
    answered = [p.answered - p.sent for p in people if p.answered is not None and p.sent is not None]
    lag = [p.sent - p.due for p in people if p.sent is not None]
    in_hubspot = sum(1 for email in ours if hub.contact_by_email(email) is not None)

    results = Results(config)
    results.counts = {
        "sent": sum(1 for p in people if p.sent is not None),
        "answers": dict(Counter(p.status for p in people)),
        "accepted_202": len(accepted),
        "emails": sum(1 for e in ours if e in packets),
        "emails_total": sum(len(packets[e]) for e in ours if e in packets),
        "duplicate_emails": sum(1 for e in ours if len(packets.get(e, ())) > 1),
        "other_emails_to_these_people": sum(len(other_mail[e]) for e in ours if e in other_mail),
        "contacts_created": sum(1 for e in ours if e in created),
        "duplicate_contacts": sum(1 for e in ours if len(created.get(e, ())) > 1),
        "contact_rewrites": sum(len(updated[e]) for e in ours if e in updated),
        "contacts_in_hubspot": in_hubspot,
        "hubspot_calls": hub.count() - calls_before["all"],
        "hubspot_batch_upserts": hub.count("batch/upsert") - calls_before["batch/upsert"],
        "hubspot_429s": hub.count(status=429) - calls_before["429"],
        "max_send_lag_seconds": max(lag) if lag else None,
        **_throughput(people, packets, created),
    }
    results.timeline = _timeline(people, packets, created)
    results.latency = {
        "202 -> email accepted": Latency.of(to_email),
        "202 -> contact at HubSpot": Latency.of(to_crm),
        "post -> 202 (request)": Latency.of(answered),
    }
    c, email, crm = (
        results.counts,
        results.latency["202 -> email accepted"],
        results.latency["202 -> contact at HubSpot"],
    )
    n = len(people)
    results.checks = [
        (email.p95 is not None and email.p95 < TARGET_EMAIL_P95, f"email p95 {_s(email.p95)} < {TARGET_EMAIL_P95:g} s"),
        (crm.p95 is not None and crm.p95 < TARGET_CRM_P95, f"CRM p95 {_s(crm.p95)} < {TARGET_CRM_P95:g} s"),
        (c["accepted_202"] == n, f"{c['accepted_202']:,} of {n:,} posts answered 202"),
        (c["emails"] == n, f"{c['emails']:,} of {n:,} people got their packet email"),
        (c["contacts_created"] == c["contacts_in_hubspot"] == n, f"{c['contacts_in_hubspot']:,} of {n:,} in HubSpot"),
        (
            c["duplicate_emails"] == 0 and c["duplicate_contacts"] == 0,
            f"nothing twice: {c['duplicate_emails']} duplicate emails, {c['duplicate_contacts']} duplicate contacts",
        ),
    ]
    return results


def _first_stamps(people: list[Person], stamps: dict[str, list[float]]) -> list[float]:
    return [stamps[p.email][0] for p in people if p.email in stamps]


def _throughput(
    people: list[Person], packets: dict[str, list[float]], created: dict[str, list[float]]
) -> dict[str, float | None]:
    """Emails and contacts per second, from the first 202 to the last one delivered (vs the offered rate)."""
    answers = [p.answered for p in people if p.status == "202" and p.answered is not None]
    out: dict[str, float | None] = {}
    for name, stamps in (("emails_per_second", packets), ("contacts_per_second", created)):
        times = _first_stamps(people, stamps)
        span = max(times) - min(answers) if times and answers else 0.0
        out[name] = len(times) / span if span > 0 else None
    return out


def _timeline(
    people: list[Person], packets: dict[str, list[float]], created: dict[str, list[float]]
) -> list[dict[str, int]]:
    """Per second since the first scheduled post: 202s received, packet emails accepted, contacts created."""
    if not people:
        return []
    start = people[0].due
    series = {
        "accepted_202": [p.answered for p in people if p.status == "202" and p.answered is not None],
        "emails": _first_stamps(people, packets),
        "contacts": _first_stamps(people, created),
    }
    last = max((t for times in series.values() for t in times), default=start)
    rows = [{"second": s, "accepted_202": 0, "emails": 0, "contacts": 0} for s in range(int(last - start) + 1)]
    for name, times in series.items():
        for t in times:
            rows[max(0, int(t - start))][name] += 1
    return rows


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}/s"


def _s(value: float | None) -> str:
    return "n/a (none delivered)" if value is None else f"{value:.2f} s"


def report(results: Results) -> None:
    c = results.counts
    print()
    print("| from -> to | n | p50 s | p95 s | max s | mean s |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, latency in results.latency.items():
        print(latency.row(name))
    print()
    print(
        f"sent {c['sent']:,}; answers {c['answers']}; emails {c['emails']:,} people ({c['emails_total']:,} messages, "
        f"{c['duplicate_emails']} people twice, {c['other_emails_to_these_people']} other emails); contacts "
        f"{c['contacts_created']:,} created ({c['duplicate_contacts']} twice, {c['contact_rewrites']:,} later "
        f"rewrites), {c['contacts_in_hubspot']:,} in HubSpot"
    )
    lag = c["max_send_lag_seconds"]
    print(
        f"HubSpot: {c['hubspot_calls']:,} calls, {c['hubspot_batch_upserts']:,} batch upserts, "
        f"{c['hubspot_429s']} 429s; load generator: max send lag {_s(lag)} behind schedule"
    )
    print(
        f"this process (load generator, SMTP sink, HubSpot emulator) used {c['harness_cpu_share_of_one_core']:.0%} "
        "of one core from the first post to the last delivery"
    )
    print(
        f"delivered per second (first 202 to last delivery): {_rate(c['emails_per_second'])} emails, "
        f"{_rate(c['contacts_per_second'])} contacts; offered {results.config['rate_per_second']:g}"
    )
    for ok, text in results.checks:
        print(("PASS " if ok else "FAIL ") + text)


# --------------------------------------------------------------------------- main


def _on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds through the ExitStack: everything started gets stopped


def main() -> int:
    defaults = Settings.model_fields
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=50.0, help="submissions per second (open loop)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds after the load to wait for delivery")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds to keep watching for duplicates")
    parser.add_argument("--warmup", type=int, default=5, help="people sent through first, not measured")
    parser.add_argument("--concurrency", type=int, default=2, help="the worker's pool size")
    parser.add_argument(
        "--crm-flush-interval",
        type=float,
        default=defaults["crm_flush_interval_seconds"].default,
        help="CRM_FLUSH_INTERVAL_SECONDS (default: the production default)",
    )
    parser.add_argument("--hubspot-rate-limit", type=int, default=100, help="HubSpot requests per 10 s")
    parser.add_argument(
        "--pg-fsync-off",
        action="store_true",
        help="run PostgreSQL like the test suite (fsync, synchronous_commit off): not durable, flattering",
    )
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the results here")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs) even on success")
    args = parser.parse_args()
    if args.rate <= 0 or args.duration <= 0:
        parser.error("--rate and --duration must be positive")

    signal.signal(signal.SIGTERM, _on_sigterm)
    run = f"{int(time.time())}"
    durability = (
        "fsync off, synchronous_commit off (NOT durable)" if args.pg_fsync_off else "fsync on, synchronous_commit on"
    )
    total = max(1, round(args.rate * args.duration))
    people = [Person(f"lead{i}-{run}@example.org", f"Lead{i}") for i in range(total)]
    workdir = Path(tempfile.mkdtemp(prefix="leadsync-e2e-"))
    keep = args.keep
    config: dict[str, Any] = {
        "rate_per_second": args.rate,
        "duration_seconds": args.duration,
        "people": total,
        "web_processes": 1,
        "workers": 1,
        "worker_concurrency": args.concurrency,
        "beat": True,
        "crm_flush_interval_seconds": args.crm_flush_interval,
        "hubspot_rate_limit_per_10s": args.hubspot_rate_limit,
        "rate_limit_per_ip": "off (all load from 127.0.0.1)",
        "rate_limit_per_email": defaults["rate_limit_per_email"].default,
        "broker": "redis",
        "database": "postgresql, "
        + (
            "fsync off, synchronous_commit off (NOT durable)"
            if args.pg_fsync_off
            else "fsync on, synchronous_commit on"
        ),
        "timing": "time.monotonic() in one process; stamps at 202 arrival, SMTP accept, HubSpot commit",
    }
    results: Results | None = None
    with contextlib.ExitStack() as cleanup:
        try:
            started = time.monotonic()
            redis = cleanup.enter_context(RedisServer())
            postgres = cleanup.enter_context(PostgresServer(durable=not args.pg_fsync_off))
            smtp = cleanup.enter_context(StampingSmtpSink())
            hub = cleanup.enter_context(
                StampingHubSpot(token=SETUP_TOKEN, rate_limit=args.hubspot_rate_limit, record_bodies=False)
            )
            env = {
                "VAR_DIR": str(workdir / "var"),
                "DATABASE_URL": postgres.create_database("leadsync_e2e"),
                "BROKER_URL": redis.url,
                **services_env(smtp, hub, token=MEASURED_TOKEN),
                "CRM_FLUSH_INTERVAL_SECONDS": str(args.crm_flush_interval),
                "HUBSPOT_RATE_LIMIT": str(args.hubspot_rate_limit),
                "RATE_LIMIT_PER_IP": "",
                "RATE_LIMIT_PER_EMAIL": str(defaults["rate_limit_per_email"].default),
                "LOG_LEVEL": "INFO",
            }
            stack = LeadsyncStack(env, workdir, workers=1, concurrency=args.concurrency)
            cleanup.callback(stack.stop)  # before start(): a half-started stack is stopped too
            _bootstrap(stack, hub)
            stack.start()
            print(
                f"leadsync on Redis + PostgreSQL ({durability}): "
                f"1 web, 1 worker (concurrency {args.concurrency}) + beat; "
                f"CRM flush every {args.crm_flush_interval:g} s; per-IP rate limit OFF (all load comes from "
                f"127.0.0.1), per-email limit at its default ({config['rate_limit_per_email']})"
            )
            print(
                f"HubSpot emulator: {args.hubspot_rate_limit} requests per rolling 10 s; SMTP sink in this process; "
                f"ready in {time.monotonic() - started:.1f} s; work dir {workdir}"
            )
            _warm_up(stack, smtp, hub, args.warmup, run)
            print(f"warm-up: {args.warmup} people through, not measured")
            calls_before = Counter(all=hub.count(), **{"batch/upsert": hub.count("batch/upsert")})
            calls_before["429"] = hub.count(status=429)
            print(f"load: {total:,} distinct people at {args.rate:g}/s for {args.duration:g} s (open loop)", flush=True)
            cpu_before, wall_before = time.process_time(), time.monotonic()
            asyncio.run(_open_loop(stack.url, people, args.rate, timeout=30.0))
            print("load done; waiting for emails and contacts", flush=True)
            _wait_delivered(people, smtp, hub, args.timeout)
            harness = (time.process_time() - cpu_before) / (time.monotonic() - wall_before)
            time.sleep(args.settle)  # late duplicates
            results = analyse(people, smtp, hub, config, calls_before)
            results.counts["harness_cpu_share_of_one_core"] = round(harness, 3)
        except BaseException:
            keep = True
            print(f"benchmark aborted; logs kept in {workdir}", file=sys.stderr)
            raise
        finally:
            if results is None or not results.passed:
                keep = True
    assert results is not None
    report(results)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results.as_json(), indent=2) + "\n")
        print(f"results written to {args.json}")
    if keep:
        print(f"logs: {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if results.passed else 1


def _bootstrap(stack: LeadsyncStack, hub: StampingHubSpot) -> None:
    """`leadsync hubspot bootstrap`, as at deployment, under another app's token: the measured app starts
    with an empty rate-limit window (HubSpot counts each app apart)."""
    stack.workdir.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [sys.executable, "-m", "leadsync", "hubspot", "bootstrap"],
        cwd=stack.workdir,
        env={**stack.env, "HUBSPOT_ACCESS_TOKEN": SETUP_TOKEN},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"leadsync hubspot bootstrap failed:\n{result.stdout}\n{result.stderr}")
    hub.set_token(MEASURED_TOKEN)


if __name__ == "__main__":
    raise SystemExit(main())

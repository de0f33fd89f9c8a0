"""The `leadsync` command: one entry point for every process and operation.

leadsync dev                 forms + worker + scheduler on one machine, no configuration needed
leadsync web / worker / beat the production processes (refuse to start without FORM_TOKEN_SECRET, SMTP_HOST)
leadsync check               every effective setting (secrets masked) and every problem; exit 1 on a problem
leadsync db upgrade          migrations (SQLite and PostgreSQL alike)
leadsync hubspot bootstrap   create the mapped HubSpot properties
leadsync hubspot check       test the token, lift a stop or pause
leadsync contacts list       the contacts as sales see them (export --csv for a spreadsheet)
leadsync contacts show EMAIL one person's submissions, emails, sync state, notes and tasks, HubSpot link
leadsync packet resend EMAIL --reason TEXT   the packet again ("went to spam"), within the daily cap
leadsync emails preview KIND render an email (HTML and text) to files, from the configured templates
leadsync status [--json]     the state of queues, emails and CRM sync; exit 1 when degraded
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from typing import Any

import click

from leadsync import serving
from leadsync.config import get_settings


def _configure_logging() -> None:
    """LOG_FORMAT (json | console) and LOG_LEVEL, through leadsync/logs.py: redacted, structured."""
    from leadsync import logs

    settings = get_settings()
    logs.configure(settings.log_format, settings.log_level)


@click.group()
def main() -> None:
    """leadsync: website leads in, one packet email out, contacts synced to HubSpot."""
    _configure_logging()


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
def dev(host: str, port: int) -> None:
    """Run forms, worker and scheduler together on SQLite, no servers needed."""
    # DEV_MODE is how the processes know they run under `leadsync dev` (leadsync/preflight.py): set here for
    # this process and inherited by the worker it starts.
    os.environ["DEV_MODE"] = "1"
    os.environ.setdefault("PUBLIC_BASE_URL", f"http://{host}:{port}")
    os.environ.setdefault("LOG_FORMAT", "console")  # people read these; the worker it starts inherits it
    get_settings.cache_clear()
    settings = get_settings()
    _configure_logging()
    from leadsync.config.settings import DEV_SECRET_FILE, dev_secret
    from leadsync.storage.migrate import upgrade

    upgrade()
    click.echo(f"leadsync dev on http://{host}:{port}/  (demo forms at /, API at /openapi.json)")
    click.echo(f"  database: {settings.sqlalchemy_url}")
    click.echo(f"  broker:   {settings.celery_broker_url} (folder {settings.var_dir / 'broker'})")
    if settings.smtp_host:
        click.echo(f"  email:    SMTP {settings.smtp_host}:{settings.smtp_port}")
    else:
        click.echo(f"  email:    written as .eml files to {settings.mail_outbox_dir}/ (set SMTP_HOST to send)")
    if settings.hubspot_enabled:
        click.echo(f"  HubSpot:  syncing to {settings.hubspot_base_url}")
    else:
        click.echo("  HubSpot:  sync held, contacts wait as pending CRM sync until HUBSPOT_ACCESS_TOKEN is set")
    if not (settings.form_token_secret and settings.form_token_secret.get_secret_value()):
        dev_secret(settings.var_dir)  # made now, before the worker starts: both read the same file
        click.echo(f"  secret:   generated once, kept in {settings.var_dir / DEV_SECRET_FILE} (set FORM_TOKEN_SECRET)")

    # Its own process group (with its pool and beat), so stopping it reaches every process it made.
    worker = subprocess.Popen(
        [sys.executable, "-m", "leadsync", "worker", "--beat", "--concurrency", "2", "--loglevel", "INFO"],
        start_new_session=True,
    )
    # uvicorn handles SIGTERM / SIGINT itself, then re-raises the signal with the handlers it found: with
    # Python's default SIGTERM action the process died there, before `finally`, and left the worker running.
    # Found handlers that raise SystemExit instead: uvicorn's graceful stop, then ours below.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, serving.exit_on_signal)
    try:
        import uvicorn

        from leadsync.logs import uvicorn_log_config

        uvicorn.run(
            "leadsync.forms.app:create_app",
            factory=True,
            host=host,
            port=port,
            log_level="info",
            log_config=uvicorn_log_config(settings.log_format, settings.log_level),
            **serving.proxy_options(settings),
        )
    finally:
        serving.stop_group(worker, grace=serving.DEV_STOP_GRACE_SECONDS)


@main.command()
def check() -> None:
    """Print every effective setting (secrets masked) and every problem; exit 1 when there is a problem."""
    from leadsync.preflight import effective, problems

    settings = get_settings()
    rows = effective(settings)
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        click.echo(f"{name:<{width}}  {value}")
    found = problems(settings)
    click.echo("")
    for problem in found:
        click.echo(f"PROBLEM: {problem}")
    if found:
        raise SystemExit(1)
    click.echo("no problems found")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--workers", default=1, show_default=True, type=int, help="uvicorn worker processes")
def web(host: str, port: int, workers: int) -> None:
    """Serve the form endpoints."""
    import uvicorn

    from leadsync.logs import uvicorn_log_config
    from leadsync.preflight import refuse_unsafe_start

    settings = get_settings()
    refuse_unsafe_start(settings, "web")
    uvicorn.run(
        "leadsync.forms.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level="info",
        # uvicorn configures logging itself (in each of its worker processes): hand it ours.
        log_config=uvicorn_log_config(settings.log_format, settings.log_level),
        # Every post already logs one line of its own (stored or refused, with the submission id); a second,
        # access-log line a request costs a fifth of the throughput (docs/benchmarks.md). ACCESS_LOG=1 adds it.
        access_log=settings.access_log,
        # Idle keep-alive connections are closed (half-open ones pile up otherwise); beyond the concurrency
        # limit uvicorn answers 503 at once instead of queuing without bound. Each uvicorn worker counts alone.
        timeout_keep_alive=settings.web_keepalive_seconds,
        limit_concurrency=settings.web_limit_concurrency,
        **serving.proxy_options(settings),
    )


def _celery_globals(app: Any) -> list[str]:
    """Celery's own CLI reads BROKER_URL from the environment and would override our configured URL
    (e.g. filesystem:// instead of leadsync's safe filesystem transport); hand it ours explicitly."""
    return ["--broker", app.conf.broker_url]


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option("--concurrency", "-c", type=int, default=None, help="worker processes (default: CPU count)")
@click.option("--queues", "-Q", default="intake,email,crm", show_default=True)
@click.option(
    "--reserve-crm/--no-reserve-crm",
    default=True,
    show_default=True,
    help="a process of its own for the crm queue, so HubSpot sync never waits behind emails",
)
@click.option("--reserved-crm-child", is_flag=True, hidden=True)
@click.pass_context
def worker(
    ctx: click.Context, concurrency: int | None, queues: str, reserve_crm: bool, reserved_crm_child: bool
) -> None:
    """Run a Celery worker; other options are passed to Celery (e.g. --beat, --loglevel).

    While it serves `crm` and another queue, the crm queue gets a reserved process of its own
    (leadsync/reserved_crm.py): --concurrency processes for intake and email, plus one for HubSpot.
    With METRICS_PORT set it serves its task counters at :METRICS_PORT/metrics (leadsync/metrics.py).
    """
    from leadsync.preflight import refuse_unsafe_start

    refuse_unsafe_start(get_settings(), "worker")
    # The reserved child writes its counters into its parent's metrics folder; the parent serves them.
    port = None if reserved_crm_child else get_settings().metrics_port
    if port:
        _prepare_worker_metrics()
    from leadsync import metrics
    from leadsync.worker.celery_app import app

    if port:
        metrics.serve_worker_metrics(port)

    loglevel = get_settings().log_level
    names = [name for name in queues.split(",") if name]
    if reserve_crm and not reserved_crm_child and "crm" in names and len(names) > 1:
        names.remove("crm")
        _start_reserved_crm(ctx.args, loglevel)
    argv = ["worker", "--queues", ",".join(names), *ctx.args]
    if concurrency:
        argv += ["--concurrency", str(concurrency)]
    if not any(arg.startswith(("--loglevel", "-l")) for arg in ctx.args):
        argv += ["--loglevel", loglevel]
    app.start(_celery_globals(app) + argv)


def _start_reserved_crm(args: list[str], loglevel: str) -> None:
    """Start the crm-only child, stopped with this worker's warm shutdown (or at exit, whichever first)."""
    from celery.signals import worker_shutdown, worker_shutting_down

    from leadsync.reserved_crm import ReservedCrm

    nodename = "celery@%h"
    for index, arg in enumerate(args):
        if arg in ("-n", "--hostname") and index + 1 < len(args):
            nodename = args[index + 1]
        elif arg.startswith("--hostname="):
            nodename = arg.partition("=")[2]
    crm = ReservedCrm(f"crm.{nodename}", loglevel, events="-E" in args or "--task-events" in args).start()
    worker_shutting_down.connect(lambda **_: crm.begin_stop(), weak=False)  # both warm shutdowns run at once
    worker_shutdown.connect(lambda **_: crm.stop(), weak=False)
    atexit.register(crm.stop)


def _prepare_worker_metrics() -> None:
    """A private multiprocess folder for this worker and its pool, set before prometheus_client is imported
    (it picks its storage at import), unless PROMETHEUS_MULTIPROC_DIR names a shared one."""
    if "prometheus_client" in sys.modules:
        raise click.ClickException("prometheus_client was imported before the metrics folder was set")
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        folder = tempfile.mkdtemp(prefix="leadsync-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder
        atexit.register(shutil.rmtree, folder, True)


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.pass_context
def beat(ctx: click.Context) -> None:
    """Run the scheduler (sweeper, CRM flush cadence). Run exactly one."""
    from leadsync.preflight import refuse_unsafe_start

    refuse_unsafe_start(get_settings(), "beat")
    from leadsync.worker.celery_app import app

    app.start([*_celery_globals(app), "beat", "--loglevel", get_settings().log_level, *ctx.args])


@main.group()
def db() -> None:
    """Database commands."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
def db_upgrade(revision: str) -> None:
    """Apply migrations up to REVISION."""
    from leadsync.storage.migrate import upgrade

    upgrade(revision=revision)
    click.echo(f"database at {revision}")


@main.group()
def hubspot() -> None:
    """HubSpot commands."""


@hubspot.command("bootstrap")
def hubspot_bootstrap() -> None:
    """Create the property group and custom properties from the mapping (idempotent)."""
    from leadsync.worker.crm.clients import crm_client, crm_mapping
    from leadsync.worker.crm.port import CrmError

    crm = crm_client()
    if crm is None:
        raise click.ClickException("HUBSPOT_ACCESS_TOKEN is not set")
    try:
        created = crm.bootstrap(crm_mapping())
    except CrmError as error:
        raise click.ClickException(str(error)) from error
    click.echo("created: " + ", ".join(created) if created else "nothing to create: all properties exist")


@hubspot.command("check")
def hubspot_check() -> None:
    """One call to HubSpot with the token; on success lift a stop (refused token) or an outage pause."""
    from leadsync.storage.db import get_sessionmaker
    from leadsync.worker.crm.clients import crm_client
    from leadsync.worker.crm.port import CrmError
    from leadsync.worker.crm.service_state import resume

    crm = crm_client()
    if crm is None:
        raise click.ClickException("HUBSPOT_ACCESS_TOKEN is not set")
    try:
        crm.check()
    except CrmError as error:
        raise click.ClickException(f"HubSpot refused: {error}") from error
    resume(get_sessionmaker())
    seen = crm.budget()
    budget = f"{seen.daily_remaining:,} of {seen.daily_limit:,} left today" if seen.daily_limit else "not reported"
    click.echo(f"token ok; CRM sync resumed; daily budget {budget}")


@main.group()
def contacts() -> None:
    """The contacts as sales see them."""


@contacts.command("list")
@click.option("--limit", default=50, show_default=True, type=int, help="most recently active first")
@click.option("--sync", type=click.Choice(["pending", "synced", "rejected"]), help="only this sync state")
def contacts_list(limit: int, sync: str | None) -> None:
    """Name, email, what was requested and when, packet, newsletter, sync state, HubSpot record link."""
    from leadsync.contacts import render_table, sales_rows
    from leadsync.storage.db import session_scope

    with session_scope() as session:
        click.echo(render_table(sales_rows(session, get_settings(), limit=limit, sync=sync)))


@contacts.command("export")
@click.option("--csv", "as_csv", is_flag=True, help="CSV with a header line (the one format)")
@click.option("--output", "-o", type=click.File("w", encoding="utf-8"), default="-", help="file (default: stdout)")
@click.option("--sync", type=click.Choice(["pending", "synced", "rejected"]), help="only this sync state")
@click.option("--page-size", default=1000, show_default=True, type=click.IntRange(1, 10_000))
def contacts_export(as_csv: bool, output: click.utils.LazyFile, sync: str | None, page_size: int) -> None:
    """Every contact, for a spreadsheet: paged by key, so leads arriving meanwhile change nothing in it.

    A progress bar shows on the terminal (stderr) when it is one.
    """
    from leadsync.contacts import all_sales_rows, export_bounds, write_csv
    from leadsync.storage.db import session_scope

    if not as_csv:
        raise click.UsageError("choose a format: --csv")
    with session_scope() as session:
        upto, total = export_bounds(session, sync)
        rows = all_sales_rows(session, get_settings(), sync=sync, chunk=page_size, upto=upto)
        if sys.stderr.isatty():
            with click.progressbar(rows, length=total, label="exporting", file=sys.stderr) as bar:
                count = write_csv(bar, output)
        else:
            count = write_csv(rows, output)
    if output.name != "<stdout>":
        click.echo(f"exported {count} contacts to {output.name}", err=True)


@contacts.command("show")
@click.argument("email")
def contacts_show(email: str) -> None:
    """Every submission, email, sync state, note and task written, and the HubSpot link of one person."""
    from leadsync.contact_story import contact_story
    from leadsync.storage.db import session_scope

    with session_scope() as session:
        story = contact_story(session, get_settings(), _normalized(email))
    if story is None:
        raise click.ClickException(f"no contact {email}")
    click.echo(story)


@main.group()
def packet() -> None:
    """The information packet email."""


@packet.command("resend")
@click.argument("email")
@click.option("--reason", required=True, help="why, e.g. 'went to spam' (kept with the send)")
def packet_resend(email: str, reason: str) -> None:
    """Send the packet again, past its resend window but never past the daily cap per mailbox."""
    from leadsync.resend import resend_packet
    from leadsync.storage.db import session_scope
    from leadsync.worker import signatures

    with session_scope() as session:
        outcome = resend_packet(session, _normalized(email), reason, get_settings())
    if outcome.send_id is None:
        raise click.ClickException(f"not sent: {outcome.refused}")
    queued = signatures.enqueue_email(outcome.send_id)
    click.echo(f"packet queued for {email} (send {outcome.send_id}){'' if queued else '; the sweeper will send it'}")


@main.group()
def emails() -> None:
    """The emails' content (EMAIL_TEMPLATES_DIR, EMAILS_CONFIG_PATH)."""


@emails.command("preview")
@click.argument("kind")
@click.option("--output-dir", "-o", type=click.Path(file_okay=False), default=".", show_default=True)
@click.option("--first-name", default="Ann", show_default=True, help="the name in the greeting")
def emails_preview(kind: str, output_dir: str, first_name: str) -> None:
    """Render KIND (info_packet, newsletter_confirm) to KIND.html, KIND.txt and KIND.eml, as it would go out."""
    from leadsync.previews import write_preview

    try:
        paths = write_preview(kind, output_dir, first_name, get_settings())
    except KeyError as error:
        raise click.UsageError(str(error.args[0])) from error
    for path in paths:
        click.echo(str(path))


def changes_state(command: Callable[..., None]) -> Callable[..., None]:
    """For commands that change state: when OPS_TOKEN is set, the operator must present it.

    `--ops-token` or LEADSYNC_OPS_TOKEN, compared in constant time. Without OPS_TOKEN (the embedded
    default on one machine) the commands run as they are.
    """

    @click.option("--ops-token", envvar="LEADSYNC_OPS_TOKEN", default=None, help="OPS_TOKEN, when one is set")
    @functools.wraps(command)
    def guarded(*args: Any, ops_token: str | None, **kwargs: Any) -> None:
        from leadsync.forms.security import ops_token_matches

        settings = get_settings()
        if settings.ops_token and settings.ops_token.get_secret_value() and not ops_token_matches(ops_token, settings):
            raise click.UsageError("this command changes state: pass --ops-token (or LEADSYNC_OPS_TOKEN) = OPS_TOKEN")
        command(*args, **kwargs)

    return guarded


@main.group()
def failed() -> None:
    """Dead letters: work that failed for good (list, retry, discard)."""


@failed.command("list")
@click.option("--all", "include_resolved", is_flag=True, help="also retried and discarded ones")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def failed_list(include_resolved: bool, as_json: bool) -> None:
    """List dead letters, oldest first."""
    from leadsync.storage.db import session_scope
    from leadsync.worker.dead_letters import open_letters

    with session_scope() as session:
        rows = [
            {
                "id": letter.id,
                "kind": letter.kind,
                "ref": letter.ref,
                "task": letter.task,
                "attempts": letter.attempts,
                "status": letter.status,
                "created_at": letter.created_at.isoformat(timespec="seconds"),
                "error": letter.error,
            }
            for letter in open_letters(session, include_resolved)
        ]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no dead letters")
    for row in rows:
        click.echo(
            f"{row['id']:>5}  {row['created_at']}  {row['kind']:<10} {row['ref']:<32} {row['status']:<9}"
            f" x{row['attempts']}  {row['error'][:80]}"
        )


@failed.command("retry")
@click.argument("ids", nargs=-1, type=int)
@click.option("--all", "retry_all", is_flag=True, help="every open dead letter")
@changes_state
def failed_retry(ids: tuple[int, ...], retry_all: bool) -> None:
    """Put failed work back in its queue; safe to run twice (each letter is retried once)."""
    from leadsync.storage.db import get_sessionmaker, session_scope
    from leadsync.worker import signatures
    from leadsync.worker.dead_letters import open_letters, retry

    if retry_all:
        with session_scope() as session:
            ids = tuple(letter.id for letter in open_letters(session))
    if not ids:
        raise click.UsageError("name dead letter ids, or --all")
    requeue = retry(get_sessionmaker(), ids)
    for submission_id in requeue.submissions:
        signatures.enqueue_submission(submission_id)
    signatures.enqueue_emails(requeue.emails)
    if requeue.crm:
        signatures.enqueue_crm_flush()
    done = len(ids) - len(requeue.skipped)
    click.echo(f"retried {done}" + (f"; not open, skipped: {list(requeue.skipped)}" if requeue.skipped else ""))


@failed.command("discard")
@click.argument("ids", nargs=-1, type=int, required=True)
@changes_state
def failed_discard(ids: tuple[int, ...]) -> None:
    """Close dead letters without retrying them."""
    from leadsync.storage.db import get_sessionmaker
    from leadsync.worker.dead_letters import discard

    closed = discard(get_sessionmaker(), ids)
    click.echo(f"discarded {len(closed)}")


@main.command("export-person")
@click.argument("email")
def export_person_command(email: str) -> None:
    """Print everything held about EMAIL as JSON (the right of access)."""
    from leadsync.storage.db import session_scope
    from leadsync.worker.privacy import export_person

    with session_scope() as session:
        data = export_person(session, _normalized(email))
    if data is None:
        raise click.ClickException("nothing is held about that address")
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


@main.command()
@click.argument("email")
@click.option("--yes", is_flag=True, help="do not ask for confirmation")
@changes_state
def forget(email: str, yes: bool) -> None:
    """Erase EMAIL here (rows, outbox files) and in HubSpot (GDPR delete by record id and by email); keeps
    only a keyed hash. With HubSpot away, its delete waits as a job the worker retries (`leadsync status`)."""
    from leadsync.storage.db import get_sessionmaker, session_scope
    from leadsync.worker import erasure
    from leadsync.worker.crm.clients import crm_client
    from leadsync.worker.privacy import erase_outbox, suppression_keys
    from leadsync.worker.privacy import forget as forget_person

    settings, address = get_settings(), _normalized(email)
    if not yes:
        click.confirm(f"Erase everything about {address}?", abort=True)
    keys, crm, job = suppression_keys(settings), crm_client(), None
    with session_scope() as session:  # the local erasure and the HubSpot job commit together
        report = forget_person(session, address, keys)
        if crm is not None or report.hubspot_id:
            job = erasure.schedule(session, address, [report.hubspot_id], keys, hold_until=report.leased_until)
    files = erase_outbox(settings.mail_outbox_dir, address, report.message_ids)
    click.echo(
        f"erased locally: {report.submissions} submissions, {report.emails} emails, {files} outbox files"
        f", blanked in {report.redacted} other rows"
    )
    if job is None or crm is None:
        waits = " (a delete of the record synced earlier waits for it: `leadsync status`)" if job else ""
        click.echo(f"HubSpot: not configured (no HUBSPOT_ACCESS_TOKEN){waits}")
        return
    outcomes = erasure.run(get_sessionmaker(), crm, job)
    if outcomes and outcomes[0].done:
        click.echo("HubSpot: GDPR delete done (by record id and by email)")
    else:
        why = outcomes[0].error if outcomes else "another worker is running it"
        click.echo(f"HubSpot: not done yet ({why}); the worker retries until it is: see `leadsync status`")


def _normalized(email: str) -> str:
    """The address as leadsync keys people: the same rule as the forms."""
    from leadsync.forms.schemas import normalize_email

    try:
        return normalize_email(email)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="EMAIL") from error


@main.command()
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def status(as_json: bool) -> None:
    """Queues, outbox, emails, CRM sync and dead letters on one screen; exits 1 when degraded."""
    from leadsync.status import collect, render

    report = collect(get_settings())
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2, sort_keys=True))
    else:
        render(report)
    sys.exit(0 if report.healthy else 1)

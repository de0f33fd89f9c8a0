"""The processes: `leadsync dev` (everything on one machine), `web`, `worker`, `beat`; `check` (the
effective settings and their problems) and `db upgrade`.

Example:
    $ leadsync worker --queues intake,email --concurrency 4
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from typing import Any

import click

from leadsync import serving
from leadsync.cli.common import configure_logging
from leadsync.config import get_settings


@click.command()
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
    configure_logging()
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


@click.command()
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


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--workers", default=1, show_default=True, type=int, help="uvicorn worker processes")
def web(host: str, port: int, workers: int) -> None:
    """Serve the form endpoints."""
    import uvicorn

    from leadsync import web_workers
    from leadsync.logs import uvicorn_log_config
    from leadsync.preflight import refuse_unsafe_start

    settings = get_settings()
    refuse_unsafe_start(settings, "web")
    options = dict(
        app="leadsync.forms.app:create_app",
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
    if workers > 1:  # each process on a socket of its own: connections spread evenly (leadsync/web_workers.py)
        web_workers.serve(uvicorn.Config(**options))
    else:
        uvicorn.run(**options)


def _celery_globals(app: Any) -> list[str]:
    """Celery's own CLI reads BROKER_URL from the environment and would override our configured URL
    (e.g. filesystem:// instead of leadsync's safe filesystem transport); hand it ours explicitly."""
    return ["--broker", app.conf.broker_url]


@click.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
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


@click.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.pass_context
def beat(ctx: click.Context) -> None:
    """Run the scheduler (sweeper, CRM flush cadence). Run exactly one."""
    from leadsync.preflight import refuse_unsafe_start

    refuse_unsafe_start(get_settings(), "beat")
    from leadsync.worker.celery_app import app

    app.start([*_celery_globals(app), "beat", "--loglevel", get_settings().log_level, *ctx.args])


@click.group()
def db() -> None:
    """Database commands."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
def db_upgrade(revision: str) -> None:
    """Apply migrations up to REVISION."""
    from leadsync.storage.migrate import upgrade

    upgrade(revision=revision)
    click.echo(f"database at {revision}")

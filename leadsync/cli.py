"""The `leadsync` command: one entry point for every process and operation.

leadsync dev                 forms + worker + scheduler on one machine, no configuration needed
leadsync web / worker / beat the production processes
leadsync db upgrade          migrations (SQLite and PostgreSQL alike)
leadsync hubspot bootstrap   create the mapped HubSpot properties
leadsync status [--json]     the state of queues, emails and CRM sync; exit 1 when degraded
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys

import click

from leadsync.config import get_settings


def _configure_logging() -> None:
    logging.basicConfig(
        level=get_settings().log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


@click.group()
def main() -> None:
    """leadsync: website leads in, one packet email out, contacts synced to HubSpot."""


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
def dev(host: str, port: int) -> None:
    """Run forms, worker and scheduler together on SQLite, no servers needed."""
    os.environ.setdefault("DEV_MODE", "1")
    os.environ.setdefault("PUBLIC_BASE_URL", f"http://{host}:{port}")
    get_settings.cache_clear()
    settings = get_settings()
    _configure_logging()
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

    worker = subprocess.Popen(
        [sys.executable, "-m", "leadsync", "worker", "--beat", "--concurrency", "2", "--loglevel", "INFO"]
    )
    try:
        import uvicorn

        uvicorn.run("leadsync.forms.app:create_app", factory=True, host=host, port=port, log_level="info")
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            worker.kill()


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--workers", default=1, show_default=True, type=int, help="uvicorn worker processes")
def web(host: str, port: int, workers: int) -> None:
    """Serve the form endpoints."""
    import uvicorn

    _configure_logging()
    uvicorn.run("leadsync.forms.app:create_app", factory=True, host=host, port=port, workers=workers, log_level="info")


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option("--concurrency", "-c", type=int, default=None, help="worker processes (default: CPU count)")
@click.option("--queues", "-Q", default="intake,email,crm", show_default=True)
@click.pass_context
def worker(ctx: click.Context, concurrency: int | None, queues: str) -> None:
    """Run a Celery worker; other options are passed to Celery (e.g. --beat, --loglevel)."""
    from leadsync.worker.celery_app import app

    argv = ["worker", "--queues", queues, *ctx.args]
    if concurrency:
        argv += ["--concurrency", str(concurrency)]
    if not any(arg.startswith(("--loglevel", "-l")) for arg in ctx.args):
        argv += ["--loglevel", get_settings().log_level]
    app.worker_main(argv)


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.pass_context
def beat(ctx: click.Context) -> None:
    """Run the scheduler (sweeper, CRM flush cadence). Run exactly one."""
    from leadsync.worker.celery_app import app

    app.start(["beat", "--loglevel", get_settings().log_level, *ctx.args])


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
    from leadsync.worker.crm.hubspot import CrmError
    from leadsync.worker.tasks import crm_client, crm_mapping

    crm = crm_client()
    if crm is None:
        raise click.ClickException("HUBSPOT_ACCESS_TOKEN is not set")
    try:
        created = crm.bootstrap(crm_mapping())
    except CrmError as error:
        raise click.ClickException(str(error)) from error
    click.echo("created: " + ", ".join(created) if created else "nothing to create: all properties exist")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def status(as_json: bool) -> None:
    """The state of intake, emails and CRM sync; exits 1 when degraded."""
    from leadsync.status import collect

    report = collect(get_settings())
    if as_json:
        click.echo(json.dumps(report, indent=2, sort_keys=True))
    else:
        _print_status(report)
    sys.exit(0 if report["verdict"] == "healthy" else 1)


def _print_status(report: dict) -> None:
    click.echo(f"database     {report['database']}")
    click.echo(f"broker       {report['broker']}")
    if "submissions" in report:
        click.echo(f"submissions  {_fmt(report['submissions'])}")
        click.echo(f"outbox       oldest pending {report['outbox_oldest_pending_seconds']:.0f}s")
        click.echo(f"contacts     {report['contacts']}")
        click.echo(f"emails       {_fmt(report['emails'])}")
        click.echo(f"crm          {_fmt(report['crm'])}  [{report['crm_sync']}]")
    for note in report["notes"]:
        click.echo(f"note         {note}")
    reasons = "; ".join(report["reasons"])
    click.echo(f"verdict      {report['verdict']}" + (f": {reasons}" if reasons else ""))


def _fmt(counts: dict[str, int]) -> str:
    return ", ".join(f"{key} {value}" for key, value in sorted(counts.items())) or "none"

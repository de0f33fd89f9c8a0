"""Operations: `leadsync failed list | retry | discard`, `export-person`, `forget`, `status`. The business
steps are the worker's own functions (worker/dead_letters.py `retry_and_publish`, worker/erasure.py
`forget_everywhere`); this module parses, asks and prints.

Example:
    $ leadsync failed retry --all --ops-token "$OPS_TOKEN"
    retried 3
"""

from __future__ import annotations

import json
import sys

import click

from leadsync.cli.common import changes_state, normalized
from leadsync.config import get_settings


@click.group()
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
    from leadsync.worker.dead_letters import open_letters, retry_and_publish

    if retry_all:
        with session_scope() as session:
            ids = tuple(letter.id for letter in open_letters(session))
    if not ids:
        raise click.UsageError("name dead letter ids, or --all")
    requeue = retry_and_publish(get_sessionmaker(), ids)
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


@click.command("export-person")
@click.argument("email")
def export_person_command(email: str) -> None:
    """Print everything held about EMAIL as JSON (the right of access)."""
    from leadsync.storage.db import session_scope
    from leadsync.worker.privacy import export_person

    with session_scope() as session:
        data = export_person(session, normalized(email))
    if data is None:
        raise click.ClickException("nothing is held about that address")
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


@click.command()
@click.argument("email")
@click.option("--yes", is_flag=True, help="do not ask for confirmation")
@changes_state
def forget(email: str, yes: bool) -> None:
    """Erase EMAIL here (rows, outbox files) and in HubSpot (GDPR delete by record id and by email); keeps
    only a keyed hash. With HubSpot away, its delete waits as a job the worker retries (`leadsync status`)."""
    from leadsync.storage.db import get_sessionmaker
    from leadsync.worker.crm.clients import crm_client
    from leadsync.worker.erasure import forget_everywhere

    settings, address = get_settings(), normalized(email)
    if not yes:
        click.confirm(f"Erase everything about {address}?", abort=True)
    erased = forget_everywhere(get_sessionmaker(), settings, address, crm_client())
    report = erased.local
    click.echo(
        f"erased locally: {report.submissions} submissions, {report.emails} emails, {erased.outbox_files} outbox files"
        f", blanked in {report.redacted} other rows"
    )
    if erased.hubspot is None:
        waits = " (a delete of the record synced earlier waits for it: `leadsync status`)" if erased.job_id else ""
        click.echo(f"HubSpot: not configured (no HUBSPOT_ACCESS_TOKEN){waits}")
        return
    outcomes = erased.hubspot
    if outcomes and outcomes[0].done:
        click.echo("HubSpot: GDPR delete done (by record id and by email)")
    else:
        why = outcomes[0].error if outcomes else "another worker is running it"
        click.echo(f"HubSpot: not done yet ({why}); the worker retries until it is: see `leadsync status`")


@click.command()
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

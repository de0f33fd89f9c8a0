"""What sales and marketing run: `leadsync contacts list | export | show`, `packet resend`, `emails preview`.

Example:
    $ leadsync contacts export --csv -o contacts.csv
"""

from __future__ import annotations

import sys

import click

from leadsync.cli.common import normalized
from leadsync.config import get_settings


@click.group()
def contacts() -> None:
    """The contacts as sales see them."""


@contacts.command("list")
@click.option("--limit", default=50, show_default=True, type=int, help="most recently active first")
@click.option("--sync", type=click.Choice(["pending", "synced", "rejected"]), help="only this sync state")
def contacts_list(limit: int, sync: str | None) -> None:
    """Name, email, what was requested and when, packet, newsletter, sync state, HubSpot record link."""
    from leadsync.sales_view import render_table, sales_rows
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
    from leadsync.sales_view import all_sales_rows, export_bounds, write_csv
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
        story = contact_story(session, get_settings(), normalized(email))
    if story is None:
        raise click.ClickException(f"no contact {email}")
    click.echo(story)


@click.group()
def packet() -> None:
    """The information packet email."""


@packet.command("resend")
@click.argument("email")
@click.option("--reason", required=True, help="why, e.g. 'went to spam' (kept with the send)")
def packet_resend(email: str, reason: str) -> None:
    """Send the packet again, past its resend window but never past the daily cap per mailbox."""
    from leadsync.resend import resend_packet
    from leadsync.storage.db import session_scope
    from leadsync.worker import enqueue

    with session_scope() as session:
        outcome = resend_packet(session, normalized(email), reason, get_settings())
    if outcome.send_id is None:
        raise click.ClickException(f"not sent: {outcome.refused}")
    queued = enqueue.enqueue_email(outcome.send_id)
    click.echo(f"packet queued for {email} (send {outcome.send_id}){'' if queued else '; the sweeper will send it'}")


@click.group()
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

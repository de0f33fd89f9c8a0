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

import click

from leadsync.cli import hubspot, ops, processes, sales
from leadsync.cli.common import configure_logging


@click.group()
def main() -> None:
    """leadsync: website leads in, one packet email out, contacts synced to HubSpot."""
    configure_logging()


for command in (
    processes.dev,
    processes.check,
    processes.web,
    processes.worker,
    processes.beat,
    processes.db,
    hubspot.hubspot,
    sales.contacts,
    sales.packet,
    sales.emails,
    ops.failed,
    ops.export_person_command,
    ops.forget,
    ops.status,
):
    main.add_command(command)

"""`leadsync hubspot bootstrap | check`: the mapped properties, and the token (lifting a stop or a pause).

Example:
    $ leadsync hubspot check
    token ok; CRM sync resumed; daily budget 249,873 of 250,000 left today
"""

from __future__ import annotations

import click


@click.group()
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

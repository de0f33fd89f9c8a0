"""What the command groups share: logging set up from the settings, the address rule, and the guard on
commands that change state.

Example:
    >>> normalized(" Ann@Example.ORG ")
    'ann@example.org'
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import click

from leadsync import ops_auth
from leadsync.config import get_settings


def configure_logging() -> None:
    """LOG_FORMAT (json | console) and LOG_LEVEL, through leadsync/logs.py: redacted, structured."""
    from leadsync import logs

    settings = get_settings()
    logs.configure(settings.log_format, settings.log_level)


def changes_state(command: Callable[..., None]) -> Callable[..., None]:
    """For commands that change state: when OPS_TOKEN is set, the operator must present it.

    `--ops-token` or LEADSYNC_OPS_TOKEN, compared in constant time. Without OPS_TOKEN (the embedded
    default on one machine) the commands run as they are.
    """

    @click.option("--ops-token", envvar="LEADSYNC_OPS_TOKEN", default=None, help="OPS_TOKEN, when one is set")
    @functools.wraps(command)
    def guarded(*args: Any, ops_token: str | None, **kwargs: Any) -> None:
        if not ops_auth.cli_allows(get_settings(), ops_token):
            raise click.UsageError("this command changes state: pass --ops-token (or LEADSYNC_OPS_TOKEN) = OPS_TOKEN")
        command(*args, **kwargs)

    return guarded


def normalized(email: str) -> str:
    """The address as leadsync keys people: the same rule as the forms."""
    from leadsync.forms.schemas import normalize_email

    try:
        return normalize_email(email)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="EMAIL") from error

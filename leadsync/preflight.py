"""What must be right before a production process starts, and the full report of `leadsync check`.

`leadsync web`, `worker` and `beat` call `refuse_unsafe_start`: outside dev mode, without a FORM_TOKEN_SECRET
of at least 32 bytes or without SMTP_HOST they print one line naming each missing variable and exit 1.
Dev mode (DEV_MODE=1) is how a process knows it runs under `leadsync dev`, which sets it for itself and the
worker it starts: the secret is then generated under VAR_DIR and emails go to the .eml outbox. An operator who
sets DEV_MODE by mistake is told loudly: `web` prints a warning at start, and `leadsync check` counts it as a
problem.

Example:
    >>> from leadsync.config import Settings
    >>> problems(Settings(_env_file=None, form_token_secret="x" * 32, smtp_host="smtp.example.org"))
    ['OPS_TOKEN is not set: /metrics answers 403 and state-changing commands ask for no token']
"""

from __future__ import annotations

from typing import Any

import click
from pydantic import SecretStr

from leadsync import ops_auth
from leadsync.config import Settings
from leadsync.config.settings import _mask_url_password
from leadsync.worker.mail.transport import clear_text_login_refusal, is_loopback

MIN_SECRET_BYTES = 32  # 256 bits: HMAC-SHA256's key strength; `openssl rand -base64 48` gives 48 bytes
SECRET_HINT = "generate one with `openssl rand -base64 48`"
# Names whose values are never printed whole; SecretStr fields are masked whatever their name.
_SECRET_WORDS = ("TOKEN", "PASSWORD", "SECRET")


def start_problems(settings: Settings) -> list[str]:
    """What keeps web / worker / beat from starting: one line per variable. None in dev mode."""
    return [] if settings.dev_mode else _required(settings)


def _required(settings: Settings) -> list[str]:
    problems = []
    secret = settings.form_token_secret.get_secret_value().strip() if settings.form_token_secret else ""
    if not secret:
        problems.append(f"FORM_TOKEN_SECRET is not set: it signs every email link and form token ({SECRET_HINT})")
    elif len(secret.encode()) < MIN_SECRET_BYTES:
        problems.append(
            f"FORM_TOKEN_SECRET is {len(secret.encode())} bytes, at least {MIN_SECRET_BYTES} needed ({SECRET_HINT})"
        )
    if not settings.smtp_host:
        problems.append("SMTP_HOST is not set: emails would only be written as .eml files under VAR_DIR/outbox")
    return problems


def refuse_unsafe_start(settings: Settings, process: str) -> None:
    """Exit 1 with one line a problem when `process` must not start; warn loudly when DEV_MODE is on."""
    if settings.dev_mode:
        click.secho(
            f"leadsync {process}: DEV_MODE is on (generated secret, demo page, no start checks); "
            "never in production: unset DEV_MODE",
            err=True,
            fg="yellow",
        )
        return
    problems = start_problems(settings)
    for problem in problems:
        click.echo(f"leadsync {process}: {problem}", err=True)
    if problems:
        raise SystemExit(1)


def problems(settings: Settings) -> list[str]:
    """Everything an operator should fix before production; `leadsync check` exits 1 when there is any."""
    found = _required(settings)
    if settings.dev_mode:
        found.insert(0, "DEV_MODE is on: demo page served, secret generated under VAR_DIR, start checks skipped")
    for index, previous in enumerate(_previous_secrets(settings), 1):
        if len(previous.encode()) < MIN_SECRET_BYTES:
            found.append(f"FORM_TOKEN_SECRET_PREVIOUS entry {index} is shorter than {MIN_SECRET_BYTES} bytes")
    if not ops_auth.configured(settings):
        found.append("OPS_TOKEN is not set: /metrics answers 403 and state-changing commands ask for no token")
    credentials = bool(settings.smtp_username or settings.smtp_password)
    refusal = settings.smtp_host and clear_text_login_refusal(settings.smtp_host, settings.smtp_security, credentials)
    if refusal:
        found.append(refusal)
    trusted = [entry.strip() for entry in settings.forwarded_allow_ips.split(",")]
    if "*" in trusted:
        found.append("FORWARDED_ALLOW_IPS is '*': anyone can claim any address and walk past the per-IP limit")
    public_host = _host_of(settings.public_base_url)
    if settings.public_base_url.startswith("http://") and not is_loopback(public_host):
        found.append("PUBLIC_BASE_URL is plain http: links in emails (confirm, unsubscribe) would travel in clear")
    if is_loopback(public_host) and not settings.dev_mode:
        # The default (http://127.0.0.1:8000) is right for `leadsync dev` only: every email link would point there.
        url = settings.public_base_url
        found.append(f"PUBLIC_BASE_URL is {url}: the links in emails would open on no one's machine")
    return found


def _host_of(url: str) -> str:
    return url.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[0]


def _previous_secrets(settings: Settings) -> list[str]:
    text = settings.form_token_secret_previous.get_secret_value() if settings.form_token_secret_previous else ""
    return [part.strip() for part in text.split(",") if part.strip()]


def mask(name: str, value: Any) -> str:
    """A setting's value as `leadsync check` prints it: secrets as `set (N chars)`, URL passwords as ***."""
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
        return f"set ({len(value)} chars)" if value else "(unset)"
    if value is None or value == "":
        return "(unset)"
    if any(word in name for word in _SECRET_WORDS):
        return f"set ({len(str(value))} chars)"
    if isinstance(value, list):
        return ",".join(str(item) for item in value) or "(empty)"
    text = str(value)
    return _mask_url_password(text) if "://" in text else text


def effective(settings: Settings) -> list[tuple[str, str]]:
    """Every setting by its environment name with the value in effect (secrets masked), in the class's order."""
    rows = [(name.upper(), mask(name.upper(), getattr(settings, name))) for name in type(settings).model_fields]
    rows.append(("(database in use)", _mask_url_password(settings.sqlalchemy_url)))
    rows.append(("(broker in use)", _mask_url_password(settings.celery_broker_url)))
    return rows

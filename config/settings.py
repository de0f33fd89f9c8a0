"""All settings in one place, read from environment variables (and an optional `.env` file).

Every name here is listed in `config/.env.example`. With nothing set, leadsync runs on one machine:
SQLite, a filesystem Celery transport, emails written as `.eml` files, HubSpot sync held as pending.

Example:
    >>> from leadsync.config import get_settings
    >>> get_settings().database_url
    'sqlite:///var/leadsync.db'
"""

from __future__ import annotations

import os
import re
import secrets
import time
from collections.abc import Iterator
from email.utils import parseaddr
from functools import lru_cache
from importlib.resources import files
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from leadsync.kinds import FormKind

CONFIG_DIR = Path(str(files("leadsync.config")))


class Settings(BaseSettings):
    """leadsync's settings; each field is the environment variable of the same name, upper-cased."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    # Where state lives. Relative paths are relative to the working directory.
    var_dir: Path = Path("var")
    database_url: str = ""  # default: sqlite under var_dir
    broker_url: str = ""  # default: filesystem:// transport under var_dir

    # HubSpot. No token: contacts wait as "pending CRM sync".
    hubspot_access_token: SecretStr | None = None
    hubspot_base_url: str = "https://api.hubapi.com"
    # Shared by every worker: a moving window in Redis when the broker is Redis, else in a file under
    # var_dir (worker/crm/ratelimit.py). 100 on Free/Starter, 190 Professional/Enterprise, 250 with the increase.
    hubspot_rate_limit: int = Field(100, ge=1, description="HubSpot requests allowed per 10 seconds")
    hubspot_timeout: float = Field(10.0, gt=0, description="seconds for one HubSpot call")
    # The HubSpot account id: record links for sales, and (with HUBSPOT_FORM_GUIDS) the Forms API submissions.
    hubspot_portal_id: str | None = None
    hubspot_mapping_path: Path = CONFIG_DIR / "hubspot_mapping.toml"
    # The HubSpot subscription type (communication preference) the newsletter is: confirmed subscribers are
    # subscribed to it, unsubscribes unsubscribe (worker/crm/preferences.py). Unset: only the custom property.
    hubspot_subscription_id: str | None = None
    # A note on the contact's timeline per info-packet request and confirmed newsletter sign-up
    # (worker/crm/notes.py). Off: properties only, as before.
    hubspot_notes: bool = True
    # leadsync form -> HubSpot form GUID, e.g. "info_packet=0b5c...,newsletter=8e21...": each such submission is
    # also sent to HubSpot's Forms API (v3 integration submit) with hutk, page and consent, for attribution and
    # the account's form workflows (worker/crm/forms_api.py). Needs HUBSPOT_PORTAL_ID. Empty: off.
    hubspot_form_guids: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict)
    hubspot_forms_base_url: str = "https://api.hsforms.com"
    # HubSpot owner ids, e.g. "101,102,103": a new info-packet lead gets one by round robin (never replacing an
    # owner the record has) and a follow-up task due the next business day (worker/crm/followups.py). Empty: off.
    hubspot_owner_ids: Annotated[list[str], NoDecode] = Field(default_factory=list)

    # Mail. No SMTP_HOST: mails are written as .eml files into var_dir/outbox.
    smtp_host: str | None = None
    smtp_port: int = Field(587, ge=1, le=65535)
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    # auto: port 465 = implicit TLS, else STARTTLS (required unless the host is loopback); starttls / tls:
    # always; none: plain text, and then SMTP_USERNAME/PASSWORD are refused for a non-local host
    # (worker/mail/transport.py). The certificate and its host name are always verified when TLS is on.
    smtp_security: Literal["auto", "starttls", "tls", "none"] = "auto"
    smtp_ca_file: Path | None = None  # PEM bundle of a private CA; unset = the system's CAs
    smtp_timeout: float = Field(15.0, gt=0, description="seconds for one SMTP conversation step")
    mail_from: str = "Regenerative Medicine Clinic <info@clinic.example>"
    # Content without a rebuild (compose mounts ./content): the Jinja2 email templates, the emails' configuration
    # (subjects, packet attachment) and the consent wording. Unset: the copies shipped in config/. Read at
    # startup, so a change needs a worker restart at most (templates are re-read when their file changes).
    email_templates_dir: Path | None = None
    emails_config_path: Path | None = None
    # The consent sentence shown next to the forms, stored with each submission as its version, and sent to
    # HubSpot's Forms API as the legal consent text. Change the version whenever the wording changes.
    consent_text: str = Field(
        "I agree that the clinic may store my details and contact me about my request.", min_length=1
    )
    consent_text_version: str = Field("2026-11", min_length=1, max_length=32)
    mail_reply_to: str | None = None  # where replies go; unset = MAIL_FROM
    info_packet_path: Path = CONFIG_DIR / "packet" / "info-packet.pdf"
    email_claim_lease_seconds: float = Field(
        600.0, gt=0, description="a send claimed this long ago without an outcome is handed out again"
    )
    email_retry_base_seconds: float = Field(5.0, gt=0, description="first retry delay; doubles per attempt")
    email_retry_max_seconds: float = Field(900.0, gt=0, description="longest wait between two attempts")
    email_give_up_after_seconds: float = Field(
        172_800.0, gt=0, description="temporary failures are retried this long (2 days, as mail servers do)"
    )
    optin_resend_window_hours: float = Field(
        24.0, ge=0, description="repeat sign-ups inside it send no new confirmation email (no list-bombing)"
    )
    packet_resend_window_days: float = Field(30.0, ge=0, description="a repeat request inside it sends nothing")

    # HTTP edge.
    public_base_url: str = "http://127.0.0.1:8000"
    thank_you_url: str = "/thank-you"
    allowed_origins: Annotated[list[str], NoDecode] = []
    # Operations endpoints (/metrics) and state-changing commands. Unset: /metrics answers 403 (fails closed).
    ops_token: SecretStr | None = None
    max_body_bytes: int = 64 * 1024
    # The demo page at /, and the one-machine shortcuts: no FORM_TOKEN_SECRET or SMTP_HOST needed (a secret is
    # generated under VAR_DIR). `leadsync dev` sets it for itself and its worker; `leadsync check` flags it.
    dev_mode: bool = False
    # Signs the email links (confirm, unsubscribe) and the forms' render-time token; at least 32 bytes
    # (`openssl rand -base64 48`). `leadsync web|worker|beat` refuse to start without it outside dev mode.
    form_token_secret: SecretStr | None = None
    # Rotation: the secrets used before, comma separated. They still verify links and tokens, never sign.
    form_token_secret_previous: SecretStr | None = None
    form_min_fill_seconds: float = Field(2.0, ge=0, description="a token younger than this makes a post spam")
    form_token_max_age_seconds: float = Field(86400.0, gt=0, description="an older token makes a post spam")
    # Abuse limits (forms/spam.py), in `limits` notation ("20 per 10 minutes"); empty = off. Over a limit a
    # post is stored as spam and answered as a success. Counted in Redis when RATE_LIMIT_STORAGE_URL or the
    # broker is Redis, else in process memory (the embedded default: each web process counts alone).
    rate_limit_per_ip: str = "20 per 10 minutes"
    rate_limit_per_email: str = "5 per hour"
    # Confirm / unsubscribe link clicks (GET page and POST) from one client address; over it: a 429 page.
    rate_limit_links_per_ip: str = "30 per 10 minutes"
    rate_limit_storage_url: str = ""  # "redis://...", "memory://"; default: the Redis broker, else memory
    block_disposable_emails: bool = True
    phone_default_region: str = Field("US", min_length=2, max_length=2, description="for numbers without +")
    email_daily_cap_per_recipient: int = Field(3, ge=1, description="emails of any kind to one address a day")

    # uvicorn in `leadsync web` / `leadsync dev`. X-Forwarded-For / -Proto are believed only from these proxy
    # addresses or networks (comma list); the per-IP limit then counts the visitor's address. "*" trusts anyone.
    forwarded_allow_ips: str = "127.0.0.1"
    web_keepalive_seconds: float = Field(5.0, gt=0, description="an idle keep-alive connection is closed after it")
    # Connections + tasks beyond this are answered 503 at once instead of queuing without bound (a post takes
    # ~2 ms, docs/benchmarks.md: 1000 in flight is far past what 2 cores serve, and far below the fd limit).
    web_limit_concurrency: int = Field(1000, ge=1, description="open connections + tasks before uvicorn says 503")

    raw_retention_days: float = Field(365.0, gt=0, description="raw submissions older than this are purged")

    # Scheduling.
    sweep_interval_seconds: float = 15.0
    sweep_grace_seconds: float = 30.0  # a pending submission older than this is enqueued again
    # A submission published this long ago and still pending is published again (its message was lost: a broker
    # crash without AOF); 5 minutes is far longer than the queue takes at 200 posts/s (DESIGN.md).
    sweep_requeue_seconds: float = Field(300.0, gt=0, description="a published, still-pending row is published again")
    # Group commit (forms/group_commit.py): most submissions in one transaction and in one broker message.
    intake_batch_max: int = Field(200, ge=1, le=1000)
    # Posts waiting for a group commit per web process; one more is answered 503 + Retry-After at once (a full
    # queue is ~5 commits of 200, well under a second: docs/benchmarks.md "Overload").
    intake_queue_max: int = Field(1000, ge=1, le=100_000)
    # Form posts in progress per web process; one more is answered 503 + Retry-After before its body is read
    # (forms/shedding.py ShedLoad, which also sheds by the wait it predicts). 64 connections saturate a process.
    intake_max_in_flight: int = Field(128, ge=1, le=100_000)
    crm_flush_interval_seconds: float = 2.0
    # A partial batch waits up to this long for a burst still being processed to fill it (full batches: one
    # upsert a 100 contacts, not one a flush); a lone lead is sent at once. 0: send what is due every flush.
    crm_batch_fill_seconds: float = Field(2.0, ge=0, le=60)
    crm_batch_size: int = Field(100, ge=1, le=100)
    # How long a flush holds its contacts: a worker killed mid-flush leaves them leased this long, then another
    # flush writes them again (an upsert by email: the same record). 3 minutes is longer than one flush with its
    # retries and timeouts (4 tries of up to 30 s each).
    crm_lease_seconds: float = Field(180.0, gt=0, description="a contact claimed by a flush is skipped this long")

    log_level: str = "INFO"
    access_log: bool = False  # uvicorn's line a request, besides leadsync's own line a post
    # JSON lines for log collectors; `console` for people (`leadsync dev` sets it).
    log_format: Literal["json", "console"] = "json"
    # A worker serves its task counters on this port (GET /metrics); unset = not served.
    metrics_port: int | None = Field(None, ge=1, le=65535)

    @field_validator("allowed_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value

    @field_validator("hubspot_form_guids", mode="before")
    @classmethod
    def _split_form_guids(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        guids: dict[str, str] = {}
        for part in filter(None, (p.strip() for p in value.split(","))):
            form, sep, guid = part.partition("=")
            if not sep or form.strip() not in set(FormKind) or not guid.strip():
                raise ValueError(f"expected form=GUID with form info_packet or newsletter, got {part!r}")
            guids[form.strip()] = guid.strip()
        return guids

    @field_validator("hubspot_owner_ids", mode="before")
    @classmethod
    def _split_owner_ids(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        owners = [p.strip() for p in value.split(",") if p.strip()]
        if any(not owner.isdigit() for owner in owners):
            raise ValueError("HubSpot owner ids are numbers, comma separated, e.g. 101,102")
        return owners

    @field_validator("hubspot_subscription_id")
    @classmethod
    def _blank_is_unset(cls, value: str | None) -> str | None:
        return (value or "").strip() or None

    @field_validator("smtp_security", "smtp_ca_file", "mail_reply_to", mode="before")
    @classmethod
    def _mail_blank_is_default(cls, value: object, info: ValidationInfo) -> object:
        # compose passes `SMTP_CA_FILE=` as an empty string for an unset variable: that means "not set".
        if isinstance(value, str) and not value.strip():
            return "auto" if info.field_name == "smtp_security" else None
        return value.strip().lower() if info.field_name == "smtp_security" and isinstance(value, str) else value

    @field_validator("mail_from", "mail_reply_to")
    @classmethod
    def _check_mailbox(cls, value: str | None) -> str | None:
        # `Name <local@domain>` or `local@domain`; a display name with a comma must be quoted.
        if value is not None and "@" not in parseaddr(value)[1]:
            raise ValueError(f'not a mailbox: {value!r} (use "Clinic name <info@clinic.example>", quoting commas)')
        return value

    @field_validator("smtp_ca_file")
    @classmethod
    def _ca_file_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"SMTP_CA_FILE {value} is not a readable file")
        return value

    @field_validator("rate_limit_per_ip", "rate_limit_per_email", "rate_limit_links_per_ip")
    @classmethod
    def _check_limit(cls, value: str) -> str:
        if value.strip():
            from limits import parse  # refuse a typo at start-up, not on the first post

            parse(value)
        return value.strip()

    @field_validator("forwarded_allow_ips")
    @classmethod
    def _check_proxies(cls, value: str) -> str:
        """Each entry an address, a network or "*": a typo would silently trust nobody (or the wrong host)."""
        import ipaddress

        entries = [entry.strip() for entry in value.split(",") if entry.strip()]
        for entry in entries:
            if entry != "*":
                ipaddress.ip_network(entry, strict=False)  # ValueError names the entry
        return ",".join(entries)

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        """Like pydantic's, but passwords inside DATABASE_URL / BROKER_URL are masked too."""
        for name, value in super().__repr_args__():
            yield name, _mask_url_password(value) if isinstance(value, str) and "://" in value else value

    @property
    def sqlalchemy_url(self) -> str:
        return self.database_url or f"sqlite:///{self.var_dir / 'leadsync.db'}"

    @property
    def celery_broker_url(self) -> str:
        return self.broker_url or "filesystem://"

    @property
    def mail_outbox_dir(self) -> Path:
        return self.var_dir / "outbox"

    @property
    def signing_keys(self) -> list[bytes]:
        """Every key that verifies a link or form token: FORM_TOKEN_SECRET first, then FORM_TOKEN_SECRET_PREVIOUS.

        Never derived from anything public (the database URL was, and links could be forged from it). Without a
        secret: in dev mode the one generated under VAR_DIR, else MissingSecret (the processes refuse to start
        before it comes to that: leadsync/preflight.py).
        """
        current = _secret(self.form_token_secret)
        if not current:
            if not self.dev_mode:
                raise MissingSecret("FORM_TOKEN_SECRET is not set")
            current = dev_secret(self.var_dir)
        previous = [p.strip() for p in _secret(self.form_token_secret_previous).split(",") if p.strip()]
        return [current.encode(), *(p.encode() for p in previous if p != current)]

    @property
    def signing_key(self) -> bytes:
        """The current key: the only one that signs (links, form tokens; other HMACs such as suppression)."""
        return self.signing_keys[0]

    @property
    def form_token_key(self) -> bytes:
        """The same key as `signing_key`; each purpose signs a different payload (leadsync/signing.py)."""
        return self.signing_key

    @property
    def hubspot_enabled(self) -> bool:
        return bool(self.hubspot_access_token and self.hubspot_access_token.get_secret_value())


class MissingSecret(RuntimeError):
    """FORM_TOKEN_SECRET is needed and not set (outside dev mode)."""


DEV_SECRET_FILE = "form-token-secret"


def _secret(value: SecretStr | None) -> str:
    return value.get_secret_value().strip() if value else ""


@lru_cache(maxsize=8)
def dev_secret(var_dir: Path) -> str:
    """The dev-mode secret: VAR_DIR/form-token-secret, created once (0600, 48 random bytes) and reused after.

    Created with O_EXCL, so the web process and the worker that start together agree on one secret.
    """
    path = var_dir / DEV_SECRET_FILE
    var_dir.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # made before, or by the process starting alongside: wait until it is written
        for _ in range(200):
            if text := path.read_text().strip():
                return text
            time.sleep(0.01)
        raise MissingSecret(f"{path} is empty: delete it and a new secret is generated") from None
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_urlsafe(48) + "\n")
    return path.read_text().strip()


def _mask_url_password(url: str) -> str:
    """`scheme://user:secret@host` -> `scheme://user:***@host`, so a repr or log line never shows it."""
    return re.sub(r"(://[^/@:]*:)[^/@]*@", r"\1***@", url)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()

"""All settings in one place, read from environment variables (and an optional `.env` file).

Every name here is listed in `config/.env.example`. With nothing set, leadsync runs on one machine:
SQLite, a filesystem Celery transport, emails written as `.eml` files, HubSpot sync held as pending.

Example:
    >>> from leadsync.config import get_settings
    >>> get_settings().database_url
    'sqlite:///var/leadsync.db'
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from importlib.resources import files
from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

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
    hubspot_rate_limit: int = Field(100, ge=1, description="HubSpot requests allowed per 10 seconds")
    hubspot_timeout: float = Field(10.0, gt=0, description="seconds for one HubSpot call")
    hubspot_portal_id: str | None = None  # only to build record links for sales
    hubspot_mapping_path: Path = CONFIG_DIR / "hubspot_mapping.toml"

    # Mail. No SMTP_HOST: mails are written as .eml files into var_dir/outbox.
    smtp_host: str | None = None
    smtp_port: int = 587
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_starttls: bool = False
    smtp_timeout: float = 15.0
    mail_from: str = "Regenerative Medicine Clinic <info@clinic.example>"
    info_packet_path: Path = CONFIG_DIR / "packet" / "info-packet.pdf"
    email_claim_lease_seconds: float = Field(
        600.0, gt=0, description="a send claimed this long ago without an outcome is handed out again"
    )
    email_retry_base_seconds: float = Field(5.0, gt=0, description="first retry delay; doubles per attempt")
    email_retry_max_seconds: float = Field(900.0, gt=0, description="longest wait between two attempts")
    email_give_up_after_seconds: float = Field(
        172_800.0, gt=0, description="temporary failures are retried this long (2 days, as mail servers do)"
    )
    packet_resend_window_days: float = Field(30.0, ge=0, description="a repeat request inside it sends nothing")

    # HTTP edge.
    public_base_url: str = "http://127.0.0.1:8000"
    thank_you_url: str = "/thank-you"
    allowed_origins: Annotated[list[str], NoDecode] = []
    ops_token: SecretStr | None = None
    max_body_bytes: int = 64 * 1024
    dev_mode: bool = False
    # The forms' render-time token (forms/tokens.py). Unset secret: derived from DATABASE_URL, so every
    # process of one deployment agrees without configuration; set it to keep it apart from the database.
    form_token_secret: SecretStr | None = None
    form_min_fill_seconds: float = Field(2.0, ge=0, description="a token younger than this makes a post spam")
    form_token_max_age_seconds: float = Field(86400.0, gt=0, description="an older token makes a post spam")

    # Scheduling.
    sweep_interval_seconds: float = 15.0
    sweep_grace_seconds: float = 30.0  # a pending submission older than this is enqueued again
    crm_flush_interval_seconds: float = 2.0
    crm_batch_size: int = Field(100, ge=1, le=100)

    log_level: str = "INFO"

    @field_validator("allowed_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value

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
    def form_token_key(self) -> bytes:
        """The HMAC key for form tokens: the configured secret, else one derived from the database URL."""
        if self.form_token_secret and self.form_token_secret.get_secret_value():
            return self.form_token_secret.get_secret_value().encode()
        return hashlib.sha256(f"leadsync form token|{self.sqlalchemy_url}".encode()).digest()

    @property
    def hubspot_enabled(self) -> bool:
        return bool(self.hubspot_access_token and self.hubspot_access_token.get_secret_value())


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()

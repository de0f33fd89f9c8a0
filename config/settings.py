"""All settings in one place, read from environment variables (and an optional `.env` file).

Every name here is listed in `config/.env.example`. With nothing set, leadsync runs on one machine:
SQLite, a filesystem Celery transport, emails written as `.eml` files, HubSpot sync held as pending.

Example:
    >>> from leadsync.config import get_settings
    >>> get_settings().database_url
    'sqlite:///var/leadsync.db'
"""

from __future__ import annotations

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
    packet_resend_window_days: float = Field(30.0, ge=0, description="a repeat request inside it sends nothing")

    # HTTP edge.
    public_base_url: str = "http://127.0.0.1:8000"
    thank_you_url: str = "/thank-you"
    allowed_origins: Annotated[list[str], NoDecode] = []
    ops_token: SecretStr | None = None
    max_body_bytes: int = 64 * 1024
    dev_mode: bool = False

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
    def hubspot_enabled(self) -> bool:
        return bool(self.hubspot_access_token and self.hubspot_access_token.get_secret_value())


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()

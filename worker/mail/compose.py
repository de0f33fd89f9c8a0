"""Building emails from the Jinja2 templates and `config/emails.toml`.

Example:
    >>> message = compose_packet(contact, message_id="<id.packet@clinic.example>", settings=settings)
    >>> message["Subject"]
    'Your FREE information packet, Ann'
"""

from __future__ import annotations

import re
import tomllib
from email.message import EmailMessage
from email.utils import formatdate
from functools import lru_cache
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from leadsync.config import Settings
from leadsync.config.settings import CONFIG_DIR


@lru_cache(maxsize=1)
def _environment() -> Environment:
    # Autoescape HTML so a name like "<script>" arrives as text, never markup.
    return Environment(
        loader=FileSystemLoader(CONFIG_DIR / "templates"),
        autoescape=select_autoescape(["html"], default_for_string=False),  # the subject is plain text
        undefined=StrictUndefined,
    )


@lru_cache(maxsize=1)
def email_config() -> dict[str, Any]:
    with (CONFIG_DIR / "emails.toml").open("rb") as file:
        return tomllib.load(file)


def _one_line(text: str) -> str:
    """Header-safe: no CR/LF or other control characters can reach a header."""
    return re.sub(r"\s+", " ", re.sub(r"[\x00-\x1f\x7f]", " ", text)).strip()


def compose_packet(contact: Any, message_id: str, settings: Settings) -> EmailMessage:
    """The information packet email: text and HTML parts, the PDF attached, a stable Message-ID."""
    config = email_config()["info_packet"]
    environment = _environment()
    context = {"contact": contact, "settings": settings}

    message = EmailMessage()
    message["Subject"] = _one_line(environment.from_string(config["subject"]).render(context))
    message["From"] = settings.mail_from
    message["To"] = contact.email
    message["Date"] = formatdate(localtime=False)
    message["Message-ID"] = message_id  # stable across retries, so receivers can spot a duplicate
    message.set_content(environment.get_template(config["text"]).render(context))
    message.add_alternative(environment.get_template(config["html"]).render(context), subtype="html")
    message.add_attachment(
        settings.info_packet_path.read_bytes(),
        maintype="application",
        subtype="pdf",
        filename=config["attachment_name"],
    )
    return message

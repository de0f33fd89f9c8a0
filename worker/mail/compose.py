"""Building emails from the Jinja2 templates and `config/emails.toml`.

Each email kind (`info_packet`, `newsletter_confirm`) names its subject, templates and extras there.
Newsletter-related kinds carry a signed unsubscribe link and the RFC 8058 one-click headers.

Example:
    >>> message = compose("info_packet", contact, message_id="<id.packet@clinic.example>", settings=settings)
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
from urllib.parse import urlencode

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from leadsync.config import Settings
from leadsync.config.settings import CONFIG_DIR
from leadsync.signing import sign

CONFIRM_TTL = 7 * 86400  # a confirmation link works for a week
UNSUBSCRIBE_TTL = 5 * 365 * 86400  # unsubscribe links must keep working


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


def link(settings: Settings, path: str, purpose: str, contact: Any, ttl: float) -> str:
    token = sign(settings.signing_key, purpose, contact.id, contact.email, ttl)
    return f"{settings.public_base_url.rstrip('/')}{path}?{urlencode({'token': token})}"


def compose(kind: str, contact: Any, message_id: str, settings: Settings) -> EmailMessage:
    """The email of `kind` for `contact`: text and HTML parts, attachments and headers as configured."""
    config = email_config()[kind]
    environment = _environment()
    context: dict[str, Any] = {"contact": contact, "settings": settings}
    if config.get("newsletter"):
        context["confirm_url"] = link(settings, "/newsletter/confirm", "confirm", contact, CONFIRM_TTL)
        context["unsubscribe_url"] = link(settings, "/newsletter/unsubscribe", "unsubscribe", contact, UNSUBSCRIBE_TTL)

    message = EmailMessage()
    message["Subject"] = _one_line(environment.from_string(config["subject"]).render(context))
    message["From"] = settings.mail_from
    message["To"] = contact.email
    message["Date"] = formatdate(localtime=False)
    message["Message-ID"] = message_id  # stable across retries, so receivers can spot a duplicate
    if config.get("newsletter"):
        # RFC 8058: mail clients show an unsubscribe button that POSTs to this URL, no page needed.
        message["List-Unsubscribe"] = f"<{context['unsubscribe_url']}>"
        message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    message.set_content(environment.get_template(config["text"]).render(context))
    message.add_alternative(environment.get_template(config["html"]).render(context), subtype="html")
    if config.get("attachment_name"):
        message.add_attachment(
            settings.info_packet_path.read_bytes(),
            maintype="application",
            subtype="pdf",
            filename=config["attachment_name"],
        )
    return message

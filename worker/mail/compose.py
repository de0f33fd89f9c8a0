"""Building emails from the Jinja2 templates and `config/emails.toml`, right on the wire.

Each email kind (`info_packet`, `newsletter_confirm`) names its fixed subject, templates and extras there.
EMAIL_TEMPLATES_DIR and EMAILS_CONFIG_PATH point at a mounted content directory instead of the copies in the
package, so staff change wording without a new image: a template edited on disk shows in the next email
(Jinja2 checks the file's mtime on every use), and the emails' configuration is read again when its file
changes.
Newsletter-related kinds carry a signed unsubscribe link, the RFC 8058 one-click headers and a List-Id.

What a visitor typed reaches an email in one place only: a plain first name in the greeting (escaped in
HTML, dropped if it looks like anything but a name). Subjects are fixed text; interest and message are
never handed to a template (the template context holds no contact).

On the wire (RFC 5322, RFC 2369/8058): structured headers (Message-ID, List-*, addresses) are plain
ASCII, never RFC 2047 encoded-words (Python's default folding turns a long URL into encoded-words, which
Gmail and Yahoo do not decode in List-Unsubscribe); an IDN domain goes as punycode; a non-ASCII display
name is an encoded-word inside the display name only. Bodies are quoted-printable/base64, so no line
exceeds 998 bytes.

Example:
    >>> message = compose(EmailKind.INFO_PACKET, contact, message_id="<id.packet@clinic.example>", settings=settings)
    >>> message["Subject"]
    'Your FREE information packet'
"""

from __future__ import annotations

import re
import secrets
import tomllib
from email.headerregistry import Address, BaseHeader, HeaderRegistry
from email.message import EmailMessage
from email.policy import EmailPolicy
from email.utils import formatdate
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from leadsync.config import Settings, get_settings
from leadsync.config.settings import CONFIG_DIR
from leadsync.kinds import EmailKind
from leadsync.signing import sign
from leadsync.worker.mail.addresses import one_line, wire_address, wire_message_id
from leadsync.worker.mail.errors import UnsendableMessage

CONFIRM_TTL = 7 * 86400  # a confirmation link works for a week
UNSUBSCRIBE_TTL = 5 * 365 * 86400  # unsubscribe links must keep working
MAX_LINE = 998  # RFC 5322 2.1.1: bytes per line, without CRLF
# Written as given, one line: Python's folder would turn a long URL into encoded-words.
VERBATIM_HEADERS = frozenset({"message-id", "list-id", "list-unsubscribe", "list-unsubscribe-post"})
# A first name as people write them ("Ann", "Mary-Jane", "O'Brien", "J. R.", "José", "李"): letters joined by
# one space, hyphen or apostrophe, a dot only before a space or at the end. No digits, ":", "/", "@", "<":
# nothing a mail client could turn into a link ("evil.example" fails: a dot inside a word).
_NAME = re.compile(r"[^\W\d_]+(?:\.?[ '\u2019-][^\W\d_]+)*\.?")
NAME_MAX = 60


# MIME boundaries, one a nesting level, made once a process. A boundary must not occur in the parts it separates
# (RFC 2046 5.1.1), and these cannot: every part is quoted-printable, which writes each `=` as `=3D`, or base64,
# which has no `-` or `_`, so no line of a part begins `--==_`. Python's generator would make a new one for each
# email and check it against the whole text with a regex compiled for it (~0.2 ms an email, a fifth of
# flattening one); fixed, the multipart Content-Type headers repeat and are parsed once (WirePolicy).
_BOUNDARY_TOKEN = secrets.token_hex(8)
ALTERNATIVE_BOUNDARY = f"==_{_BOUNDARY_TOKEN}_alt_=="
MIXED_BOUNDARY = f"==_{_BOUNDARY_TOKEN}_mix_=="
FOLD_CACHE = 2048
_FOLDED: dict[tuple[Any, ...], bytes] = {}


class _CachedHeaderRegistry(HeaderRegistry):
    """CPython's registry builds a new class for every header it makes (`type()` in `__getitem__`, ~30 us under
    load, 22 headers an email: a third of `compose`); the class depends on the name only, so build it once."""

    def __init__(self) -> None:
        super().__init__()
        self._classes: dict[str, type[BaseHeader]] = {}

    def __getitem__(self, name: str) -> type[BaseHeader]:
        key = name.lower()
        cls = self._classes.get(key)
        if cls is None:
            cls = self._classes[key] = super().__getitem__(name)
        return cls


class WirePolicy(EmailPolicy):
    """`email.policy.default`, except that the structured headers in VERBATIM_HEADERS are never refolded."""

    def header_store_parse(self, name: str, value: Any) -> tuple[str, Any]:
        # Most headers repeat from email to email (Subject, From, every MIME part's Content-Type...); parsing one
        # costs ~50-100 us. Header objects are immutable, so equal text shares one.
        if type(value) is str:
            return _stored(self, name, value)
        return super().header_store_parse(name, value)

    def fold(self, name: str, value: str) -> str:
        if name.lower() in VERBATIM_HEADERS:
            return f"{name}: {value}{self.linesep}"
        return super().fold(name, value)

    def fold_binary(self, name: str, value: str) -> bytes:
        if name.lower() in VERBATIM_HEADERS:
            return self.fold(name, value).encode("ascii")
        # Folding a structured header walks its parse tree (~30-60 us); the same text folds the same way under
        # the same policy settings, and most headers repeat from email to email.
        key = (self.linesep, self.max_line_length, self.utf8, self.cte_type, name, str(value))
        folded = _FOLDED.get(key)
        if folded is None:
            if len(_FOLDED) >= FOLD_CACHE:
                _FOLDED.clear()  # an email's own headers (To, Date ...) are one-off: start again, never grow
            folded = _FOLDED[key] = super().fold_binary(name, value)
        return folded


@lru_cache(maxsize=1024)  # the ~15 repeating headers stay; an email's own (To, Date, Message-ID ...) pass through
def _stored(policy: EmailPolicy, name: str, value: str) -> tuple[str, Any]:
    return EmailPolicy.header_store_parse(policy, name, value)


WIRE_POLICY = WirePolicy(header_factory=_CachedHeaderRegistry())


def templates_dir(settings: Settings) -> Path:
    return settings.email_templates_dir or CONFIG_DIR / "templates"


def config_path(settings: Settings) -> Path:
    return settings.emails_config_path or CONFIG_DIR / "emails.toml"


@lru_cache(maxsize=4)
def _environment(directory: Path) -> Environment:
    # Autoescape HTML so a name like "<script>" arrives as text, never markup. auto_reload (Jinja2's default):
    # a template whose file changed is compiled again on its next use.
    return Environment(
        loader=FileSystemLoader(directory),
        autoescape=select_autoescape(["html"]),
        undefined=StrictUndefined,  # a template asking for anything not in the context fails loudly
        auto_reload=True,
    )


def email_config(settings: Settings | None = None) -> dict[str, Any]:
    """The emails' configuration (EMAILS_CONFIG_PATH, else config/emails.toml), checked; read again when the
    file changes (one stat per email)."""
    path = config_path(settings or get_settings())
    return _config_at(path, path.stat().st_mtime_ns)


@lru_cache(maxsize=4)
def _config_at(path: Path, mtime_ns: int) -> dict[str, Any]:
    return load_email_config(path)


def load_email_config(path: Path) -> dict[str, Any]:
    """An emails.toml, checked: every subject is fixed text (no template syntax, one line)."""
    with path.open("rb") as file:
        config = tomllib.load(file)
    for kind, entry in config.items():
        subject = entry["subject"]
        if "{{" in subject or "{%" in subject or one_line(subject) != subject:
            raise ValueError(f"emails.toml [{kind}] subject must be fixed text on one line: {subject!r}")
    return config


def greeting_name(first_name: str | None) -> str | None:
    """The first name for "Hello Ann,", or None when it is not plainly a name (then the greeting has none)."""
    name = one_line(first_name or "")
    return name if len(name) <= NAME_MAX and _NAME.fullmatch(name) else None


def _structured(name: str, value: str) -> str:
    """A header value that goes on the wire verbatim: ASCII, one line, within 998 bytes."""
    if not value.isascii() or one_line(value) != value or len(name) + 2 + len(value) > MAX_LINE:
        raise UnsendableMessage(f"{name} cannot be written as one plain ASCII line: {value[:80]!r}...")
    return value


def link(settings: Settings, path: str, purpose: str, contact: Any, ttl: float) -> str:
    token = sign(settings.signing_key, purpose, contact.id, contact.email, ttl)
    return f"{settings.public_base_url.rstrip('/')}{path}?{urlencode({'token': token})}"


def compose(kind: EmailKind | str, contact: Any, message_id: str, settings: Settings) -> EmailMessage:
    """The email of `kind` for `contact`: text and HTML parts, attachments and headers as configured.

    Raises UnsendableMessage (a PermanentMailError) when an address cannot go on the wire as ASCII.
    """
    config = email_config(settings)[kind]
    environment = _environment(templates_dir(settings))
    # The whole template context: no contact object, so no template can echo interest or message.
    context: dict[str, Any] = {"first_name": greeting_name(contact.first_name)}
    if config.get("newsletter"):
        context["confirm_url"] = link(settings, "/newsletter/confirm", "confirm", contact, CONFIRM_TTL)
        context["unsubscribe_url"] = link(settings, "/newsletter/unsubscribe", "unsubscribe", contact, UNSUBSCRIBE_TTL)

    sender = _configured_address(settings.mail_from)
    recipient = wire_address(contact.email)
    message = EmailMessage(policy=WIRE_POLICY)
    message["Subject"] = config["subject"]  # fixed text from emails.toml, never visitor text
    # As text, the header Python would make of the Address anyway: the same text every email, parsed once.
    message["From"] = str(sender)
    message["To"] = Address(username=recipient.username, domain=recipient.domain)  # bare address: no visitor text
    if settings.mail_reply_to:
        message["Reply-To"] = str(_configured_address(settings.mail_reply_to))
    message["Date"] = formatdate(localtime=False)
    # Stable across retries, so receivers can spot a duplicate.
    message["Message-ID"] = _structured("Message-ID", wire_message_id(message_id))
    if config.get("newsletter"):
        # RFC 2919 List-Id next to RFC 2369 List-Unsubscribe: a list header without it looks forged
        # (SpamAssassin's __LIST_PARTIAL). RFC 8058: clients show a button that POSTs to the URL, no page.
        list_name = one_line(config.get("list_name", "Newsletter"))
        message["List-Id"] = _structured("List-Id", f"{list_name} <{config['list_id']}.{sender.domain}>")
        message["List-Unsubscribe"] = _structured("List-Unsubscribe", f"<{context['unsubscribe_url']}>")
        message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    message.set_content(environment.get_template(config["text"]).render(context), cte="quoted-printable")
    message.make_alternative(boundary=ALTERNATIVE_BOUNDARY)
    message.add_alternative(
        environment.get_template(config["html"]).render(context), subtype="html", cte="quoted-printable"
    )
    if config.get("attachment_name"):
        path = settings.info_packet_path
        version = path.stat()  # a file staff replaced (a new inode, size or time) is read again
        message.make_mixed(boundary=MIXED_BOUNDARY)
        message.attach(
            _attachment(path, (version.st_ino, version.st_size, version.st_mtime_ns), config["attachment_name"])
        )
    return message


@lru_cache(maxsize=8)
def _configured_address(text: str) -> Address:
    """MAIL_FROM / MAIL_REPLY_TO on the wire: the same for every email."""
    return wire_address(text)


@lru_cache(maxsize=4)
def _attachment(path: Path, version: tuple[int, int, int], filename: str) -> EmailMessage:
    """The packet PDF as a MIME part, base64-encoded once a file version rather than once an email. Shared by
    every email: generating a message reads its parts and never changes a non-multipart one."""
    part = EmailMessage(policy=WIRE_POLICY)
    part.set_content(path.read_bytes(), maintype="application", subtype="pdf", filename=filename)  # an attachment
    return part

"""`leadsync emails preview KIND`: an email rendered from the configured templates, written to files.

Staff edit templates in the content directory (EMAIL_TEMPLATES_DIR) and look at the result before anyone
receives it: KIND.html (open in a browser), KIND.txt and KIND.eml (open in a mail client: headers,
attachment and all) are written exactly as compose() builds them for a sample contact.

Example:
    >>> write_preview("info_packet", "/tmp/preview", "Ann", settings)
    [PosixPath('/tmp/preview/info_packet.html'), PosixPath('/tmp/preview/info_packet.txt'), ...]
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from leadsync.config import Settings
from leadsync.worker.mail.compose import compose, email_config

SAMPLE_EMAIL = "preview@example.org"


@dataclass(frozen=True)
class SampleContact:
    """What compose() reads of a contact (links are signed for this made-up one and lead nowhere)."""

    id: int
    email: str
    first_name: str | None


def write_preview(kind: str, directory: str | Path, first_name: str, settings: Settings) -> list[Path]:
    """Write KIND.html, KIND.txt and KIND.eml into `directory`; KeyError names the kinds there are."""
    kinds = email_config(settings)
    if kind not in kinds:
        raise KeyError(f"unknown email kind {kind!r}; choose one of: {', '.join(sorted(kinds))}")
    message = compose(kind, SampleContact(0, SAMPLE_EMAIL, first_name), f"<preview.{kind}@leadsync.local>", settings)
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    html = message.get_body(("html",))
    text = message.get_body(("plain",))
    paths = [folder / f"{kind}.html", folder / f"{kind}.txt", folder / f"{kind}.eml"]
    paths[0].write_text(html.get_content() if html is not None else "", encoding="utf-8")
    paths[1].write_text(text.get_content() if text is not None else "", encoding="utf-8")
    paths[2].write_bytes(message.as_bytes())
    return paths

"""Addresses and Message-IDs as they must go on the wire: ASCII addr-specs, IDN domains as punycode.

Relays without SMTPUTF8 (most) take only ASCII in the envelope and in structured headers; a non-ASCII
display name may be an RFC 2047 encoded-word, but only inside the display name (Python does that).

Example:
    >>> str(wire_address('"Klinik Müller" <info@klinik-müller.example>'))
    'Klinik Müller <info@xn--klinik-mller-klb.example>'
    >>> outbox_file_name("<01J9.packet@klinik-müller.example>")
    '01J9.packet_xn--klinik-mller-klb.example.eml'
"""

from __future__ import annotations

import re
from email.headerregistry import Address
from email.utils import parseaddr

import idna

from leadsync.worker.mail.errors import UnsendableMessage


def one_line(text: str) -> str:
    """Header-safe: no CR/LF or other control characters can reach a header."""
    return re.sub(r"\s+", " ", re.sub(r"[\x00-\x1f\x7f]", " ", text)).strip()


def ascii_domain(domain: str) -> str:
    """`bücher.example` -> `xn--bcher-kva.example` (IDNA 2008 with UTS 46 mapping, as email_validator does)."""
    if domain.isascii():
        return domain.lower()
    try:
        return idna.encode(domain, uts46=True).decode("ascii")
    except idna.IDNAError as error:
        raise UnsendableMessage(f"domain {domain!r} has no ASCII form: {error}") from None


def wire_address(text: str) -> Address:
    """`Name <local@domain>` or `local@domain` as an Address with an ASCII addr-spec."""
    display_name, address = parseaddr(text)
    local, _, domain = address.rpartition("@")
    if not local or not domain:
        raise UnsendableMessage(f"not an email address: {text!r}")
    if not local.isascii():
        # Would need SMTPUTF8 end to end; most relays and many mailboxes do not offer it.
        raise UnsendableMessage(f"mailbox name {local!r} is not ASCII: cannot be sent without SMTPUTF8")
    return Address(display_name=one_line(display_name), username=local, domain=ascii_domain(domain))


def wire_message_id(message_id: str) -> str:
    """`<id@münchen.example>` -> `<id@xn--mnchen-3ya.example>`: the domain part comes from MAIL_FROM."""
    left, _, domain = message_id.strip().strip("<>").rpartition("@")
    return f"<{left}@{ascii_domain(domain)}>" if left else message_id


def outbox_file_name(message_id: str) -> str:
    """The `.eml` name FolderTransport gives a message: from the stored or the wire Message-ID, the same name."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", wire_message_id(message_id).strip("<>")) + ".eml"

"""SMTP command pipelining (RFC 2920) for smtplib: MAIL, RCPT and DATA in one write, their replies read after.

Why: smtplib waits for the reply to each command, so a message costs four round trips (MAIL, RCPT, DATA,
the end of the data). A relay that advertises PIPELINING (Postfix, Exim, Gmail, SES, Postmark do) takes
MAIL, the RCPTs and DATA in one go, and the message costs two: 20 ms rather than 40 ms at a 10 ms round trip,
and under `./bench/run email` the worker waited on the server ~43% of its time (py-spy; docs/benchmarks.md
"Fifth round"). Without the extension, smtplib's own `sendmail` runs, unchanged.

What stays as in smtplib: the replies are checked in order and raise the same exceptions (a refused sender,
all recipients refused, DATA or the message refused); a 421 closes the connection, anything else is reset
with RSET. The message's content is sent only after the server's 354, so `data_started` (see transport.py)
still marks the point after which the server may hold the message: a connection lost while reading the
grouped replies has taken nothing of it.

Example:
    >>> Pipelining("smtp.example.org", 587).sendmail("from@clinic.example", ["ann@example.org"], raw)
"""

from __future__ import annotations

import contextlib
import re
import smtplib
from collections.abc import Sequence
from typing import Any

LEADING_DOT = re.compile(rb"(?m)^\.")  # RFC 5321 4.5.2: a line that starts with "." gets a second one


class Pipelining(smtplib.SMTP):
    """smtplib.SMTP whose `sendmail` pipelines MAIL, RCPT and DATA when the server offers PIPELINING."""

    # Whether this message's content may have reached the server (pipelined: after the 354; smtplib's own path:
    # from its DATA command): from then on the server may hold it, and the transport must not send it again
    # itself (transport.py). Reset by the transport before each message.
    data_started = False

    def data(self, msg: bytes | str) -> tuple[int, bytes]:  # smtplib's own path, without PIPELINING
        self.data_started = True
        return super().data(msg)

    def sendmail(
        self,
        from_addr: str,
        to_addrs: str | Sequence[str],
        msg: Any,
        mail_options: Sequence[str] = (),
        rcpt_options: Sequence[str] = (),
    ) -> dict[str, tuple[int, bytes]]:
        self.ehlo_or_helo_if_needed()
        # SMTPUTF8 (never sent: worker/mail/addresses.py keeps envelopes ASCII) stays with smtplib, which switches
        # the command encoding and checks the server's offer.
        utf8 = any(option.lower() == "smtputf8" for option in mail_options)
        if not self.has_extn("pipelining") or not isinstance(msg, bytes) or utf8:
            return super().sendmail(from_addr, to_addrs, msg, mail_options, rcpt_options)
        recipients = [to_addrs] if isinstance(to_addrs, str) else list(to_addrs)
        options = ([f"SIZE={len(msg)}"] if self.has_extn("size") else []) + list(mail_options)
        commands = [f"MAIL FROM:{smtplib.quoteaddr(from_addr)}{_options(options)}"]
        commands += [f"RCPT TO:{smtplib.quoteaddr(to)}{_options(rcpt_options)}" for to in recipients]
        commands.append("DATA")
        if any("\r" in command or "\n" in command for command in commands):
            raise ValueError("command and arguments contain prohibited newline characters")
        self.send("".join(f"{command}\r\n" for command in commands))

        sender = self.getreply()
        refused = {}
        for to in recipients:
            code, text = self.getreply()
            if code not in (250, 251):
                refused[to] = (code, text)
        data = self.getreply()
        if data[0] == 354 and (sender[0] != 250 or len(refused) == len(recipients)):
            self.send(b".\r\n")  # RFC 2920 3.1: DATA was taken with no one to deliver to: end it, empty
            self.getreply()
        if sender[0] != 250:
            self._abandon(sender[0])
            raise smtplib.SMTPSenderRefused(sender[0], sender[1], from_addr)
        if len(refused) == len(recipients):
            self._abandon(*(code for code, _ in refused.values()))
            raise smtplib.SMTPRecipientsRefused(refused)
        if data[0] != 354:
            self._abandon(data[0])
            raise smtplib.SMTPDataError(*data)
        self.data_started = True
        content = LEADING_DOT.sub(b"..", msg)
        if not content.endswith(b"\r\n"):
            content += b"\r\n"
        self.send(content + b".\r\n")
        code, text = self.getreply()
        if code != 250:
            self._abandon(code)
            raise smtplib.SMTPDataError(code, text)
        return refused

    def _abandon(self, *codes: int) -> None:
        """After a refusal: a 421 means the server is closing, so close; else RSET for the next message."""
        if 421 in codes:
            self.close()
            return
        with contextlib.suppress(smtplib.SMTPServerDisconnected):
            self.rset()


def _options(options: Sequence[str]) -> str:
    return "".join(f" {option}" for option in options)

"""An SMTP server for the one window SMTP cannot close: the message was accepted, the sender died before it knew.

`AcceptThenStall` keeps the message (its envelope and raw bytes) at the end of DATA, then, while armed,
holds back the 250: the server has the message and the sender is still waiting in `transport.send`, so it
cannot have committed `sent`: a SIGKILL now lands exactly in the window. (It used to hold the reply to QUIT;
since a batch reuses one connection, QUIT comes only after the batch's `sent` rows are committed.)
Only the first message to a recipient is stalled (keyed on the envelope, so a broken Message-ID cannot
hide); a second copy (the lease-expiry redelivery) passes straight through, so the drill sees it arrive.

Example:
    >>> with AcceptThenStall() as server:
    ...     server.arm()
    ...     ...  # let a worker send; server.wait_stalled(1); kill the worker
    ...     server.disarm()
    ...     server.copies_per_recipient()
    Counter({'ann@example.org': 2})
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import threading
from collections import Counter
from collections.abc import Iterator
from email.message import EmailMessage
from typing import Any, Self, cast

from tests.support.services import LOOPBACK, ReceivedMail, free_port

__all__ = ["AcceptThenStall"]


class _StallHandler:
    """aiosmtpd hooks (names are aiosmtpd's); they run in the controller's event-loop thread."""

    def __init__(self, server: AcceptThenStall) -> None:
        self.server = server

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: list[str]) -> str:
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.server._accept(envelope):
            # aiosmtpd cancels this coroutine when the client's socket closes (its process was killed),
            # so `stalled` counts live senders only.
            with self.server._stalling():
                while self.server._armed.is_set():
                    await asyncio.sleep(0.02)
        return "250 Message accepted for delivery"


class AcceptThenStall:
    """Accepts every message; while armed, the sender of a first copy never hears the 250 for it."""

    def __init__(self) -> None:
        self.host = LOOPBACK
        self.port = free_port()
        self._received: list[ReceivedMail] = []
        self._seen: set[tuple[str, ...]] = set()
        self._stalled = 0
        self._cond = threading.Condition()
        self._armed = threading.Event()
        self._controller: Any = None

    def start(self) -> Self:
        from aiosmtpd.controller import Controller

        self._controller = Controller(
            _StallHandler(self), hostname=self.host, port=self.port, server_hostname="smtp-stall.test"
        )
        self._controller.start()
        return self

    def stop(self) -> None:
        self.disarm()
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # the fault ---------------------------------------------------------------
    def arm(self) -> None:
        """Stall every sender of a first copy after its 250, until `disarm`."""
        self._armed.set()

    def disarm(self) -> None:
        self._armed.clear()

    @property
    def stalled(self) -> int:
        """Senders of a first copy the server kept, waiting for its 250, now."""
        with self._cond:
            return self._stalled

    def wait_stalled(self, count: int, timeout: float = 30.0) -> None:
        """Block until exactly ``count`` senders are stalled (AssertionError on timeout)."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._stalled == count, timeout):
                raise AssertionError(f"expected {count} stalled sender(s) within {timeout}s, got {self._stalled}")

    # what left the system ----------------------------------------------------
    @property
    def received(self) -> list[ReceivedMail]:
        """Every accepted message with its envelope and raw bytes, oldest first."""
        with self._cond:
            return list(self._received)

    def copies_per_recipient(self) -> Counter[str]:
        """How many messages each envelope recipient received."""
        return Counter(rcpt for mail in self.received for rcpt in mail.rcpt_tos)

    def wait_received(self, count: int, timeout: float = 30.0) -> list[ReceivedMail]:
        with self._cond:
            if not self._cond.wait_for(lambda: len(self._received) >= count, timeout):
                raise AssertionError(f"expected {count} message(s) within {timeout}s, got {len(self._received)}")
            return list(self._received)

    # internals -----------------------------------------------------------------
    def _accept(self, envelope: Any) -> bool:
        """Keep the message; True when its sender is to be stalled (armed, and the first message to its recipients)."""
        raw: bytes = envelope.original_content or envelope.content
        message = cast(EmailMessage, email.message_from_bytes(raw, policy=email.policy.default))
        recipients = tuple(envelope.rcpt_tos)
        with self._cond:
            self._received.append(ReceivedMail(envelope.mail_from, tuple(envelope.rcpt_tos), message, raw))
            first = recipients not in self._seen
            self._seen.add(recipients)
            self._cond.notify_all()
        return first and self._armed.is_set()

    @contextlib.contextmanager
    def _stalling(self) -> Iterator[None]:
        with self._cond:
            self._stalled += 1
            self._cond.notify_all()
        try:
            yield
        finally:
            with self._cond:
                self._stalled -= 1
                self._cond.notify_all()

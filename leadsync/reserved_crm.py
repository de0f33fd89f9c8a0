"""The reserved CRM process of `leadsync worker`: a Celery worker of its own on the `crm` queue.

Why: one pool serving every queue lets a burst's email work starve the HubSpot sync. 3,000 sign-ups make
~3,000 confirmation emails (about 20 s of work for two processes) and 30 HubSpot batch calls (3 s at
HubSpot's 100 calls / 10 s); behind the emails the last contact reached HubSpot 50 s after the last post
(issue 18). Separate queues do not help while the same two processes take from all of them; a process that
takes only `crm` runs each flush the moment it is due, and a full batch re-enqueues the next at once, so the
sync drains at HubSpot's ceiling whatever the email backlog (tests/integration/test_reserved_crm.py).

The child is `leadsync worker --queues crm --concurrency 1` with the parent's environment: its HubSpot
counters land in the parent's PROMETHEUS_MULTIPROC_DIR (served by the parent's METRICS_PORT), it dies with
its parent (PR_SET_PDEATHSIG on Linux, so a SIGKILLed worker leaves no orphan), it is stopped with the
parent's warm shutdown (SIGTERM when the parent's starts, worker_shutting_down; waited for at its end,
worker_shutdown), and it is started again if it exits on its own.

Example:
    >>> crm = ReservedCrm(nodename="crm.celery@%h", loglevel="INFO").start()
    >>> crm.stop()          # SIGTERM, wait for its running flush, as Celery's warm shutdown does
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import signal
import subprocess
import sys
import threading
from typing import Self

log = logging.getLogger(__name__)
_PR_SET_PDEATHSIG = 1  # linux/prctl.h
RESTART_DELAY_SECONDS = 1.0  # a child that keeps crashing is restarted once a second, not in a tight loop


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM it when the parent dies (Linux; elsewhere a no-op)."""
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class ReservedCrm:
    """One supervised child process consuming only the `crm` queue."""

    def __init__(self, nodename: str, loglevel: str, events: bool = False) -> None:
        self.argv = [
            sys.executable, "-m", "leadsync", "worker", "--reserved-crm-child",
            "--queues", "crm", "--concurrency", "1", "-n", nodename, "--loglevel", loglevel,
        ]  # fmt: skip
        if events:
            self.argv.append("-E")
        self.process: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()

    def start(self) -> Self:
        self._spawn()
        threading.Thread(target=self._supervise, name="reserved-crm", daemon=True).start()
        return self

    def _spawn(self) -> None:
        with self._lock:
            if not self._stopping.is_set():
                self.process = subprocess.Popen(self.argv, preexec_fn=_die_with_parent)

    def _supervise(self) -> None:
        while not self._stopping.is_set():
            process = self.process
            assert process is not None
            code = process.wait()
            if self._stopping.wait(RESTART_DELAY_SECONDS):
                return
            log.error("the reserved CRM process exited with %s; starting it again", code)
            self._spawn()

    def begin_stop(self) -> None:
        """SIGTERM now, without waiting: the child's warm shutdown runs alongside its parent's."""
        with self._lock:
            self._stopping.set()
            process = self.process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM (Celery's warm shutdown: the running flush finishes), then SIGKILL after `timeout`."""
        self.begin_stop()
        process = self.process
        if process is None:
            return
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

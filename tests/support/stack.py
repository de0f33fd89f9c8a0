"""Running leadsync for real in tests: `leadsync web` and `leadsync worker` as separate processes.

Example:
    >>> with LeadsyncStack(env, tmp_path) as stack:
    ...     stack.post("info-packet", {"email": "ann@example.org", "first_name": "Ann"})
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from tests.support.services import free_port

TEST_SECRET = "test-form-token-secret-0123456789abcdef"  # tests/conftest.py's base_env uses it too

T = TypeVar("T")


def wait_for(condition: Callable[[], T], timeout: float = 30.0, interval: float = 0.1, what: str = "condition") -> T:
    """Poll `condition` until it returns something truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last value: {value!r})")
        time.sleep(interval)


def count(url: str, statement: Any) -> int:
    """One scalar from a fresh engine (the stack's processes hold their own); SQLite waits up to 30 s for a lock."""
    engine = create_engine(url, connect_args={"timeout": 30} if url.startswith("sqlite") else {})
    try:
        with Session(engine) as session:
            return session.scalar(statement) or 0
    finally:
        engine.dispose()


def services_env(smtp: Any, hubspot: Any, token: str = "test-token") -> dict[str, str]:
    """Settings that point leadsync at the test SMTP server and HubSpot emulator, flushing CRM often."""
    return {
        "SMTP_HOST": smtp.host,
        "SMTP_PORT": str(smtp.port),
        "HUBSPOT_ACCESS_TOKEN": token,
        "HUBSPOT_BASE_URL": hubspot.url,
        "CRM_FLUSH_INTERVAL_SECONDS": "0.5",
    }


class LeadsyncStack:
    """A web process and worker processes (the first with beat) sharing one configuration."""

    def __init__(
        self,
        env: dict[str, str],
        workdir: Path,
        workers: int = 1,
        concurrency: int = 2,
        *,
        web_workers: int = 1,
        separate_beat: bool = False,
    ) -> None:
        """`web_workers` > 1 runs `leadsync web --workers N`; `separate_beat` runs `leadsync beat` as its own
        process (production's topology) instead of `worker --beat`."""
        # Rate limits off unless a test sets them: many tests post often from 127.0.0.1 (tests/security sets them).
        limits_off = {"RATE_LIMIT_PER_IP": "", "RATE_LIMIT_PER_EMAIL": "", "RATE_LIMIT_LINKS_PER_IP": ""}
        # `leadsync web|worker|beat` refuse to start without a secret and, outside dev mode, without SMTP_HOST:
        # a stack that keeps emails as .eml files (no SMTP_HOST) is the embedded default, run in dev mode.
        required = {"FORM_TOKEN_SECRET": TEST_SECRET}
        self.env = {**os.environ, **limits_off, **required, **env, "PYTHONUNBUFFERED": "1"}
        if not self.env.get("SMTP_HOST") and "DEV_MODE" not in env:
            self.env["DEV_MODE"] = "1"
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.worker_count = workers
        self.concurrency = concurrency
        self.web_workers = web_workers
        self.separate_beat = separate_beat
        self.beat: subprocess.Popen[bytes] | None = None
        self.web: subprocess.Popen[bytes] | None = None
        self.workers: list[subprocess.Popen[bytes]] = []
        self._logs: list[Path] = []
        self.client = httpx.Client(base_url=self.url, timeout=10)

    def _spawn(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        log = self.workdir / f"{name}.log"
        self._logs.append(log)
        handle = log.open("ab")
        # Its own session (process group), so a test can SIGKILL a worker with its pool children.
        return subprocess.Popen(
            [sys.executable, "-m", "leadsync", *args],
            cwd=self.workdir,
            env=self.env,
            stdout=handle,
            stderr=handle,
            start_new_session=True,
        )

    def start(self) -> LeadsyncStack:
        self.workdir.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "leadsync", "db", "upgrade"],
            cwd=self.workdir,
            env=self.env,
            check=True,
            capture_output=True,
        )
        web_args = ["--workers", str(self.web_workers)] if self.web_workers > 1 else []
        self.web = self._spawn("web", "web", "--port", str(self.port), *web_args)
        if self.separate_beat:
            self.beat = self._spawn("beat", "beat", "--schedule", str(self.workdir / "beat-schedule"))
        for index in range(self.worker_count):
            self.start_worker(beat=index == 0 and not self.separate_beat)
        wait_for(self._ready, timeout=30, what="leadsync web /readyz")
        return self

    def start_worker(self, beat: bool = False) -> subprocess.Popen[bytes]:
        index = len(self.workers)
        args = ["worker", "--concurrency", str(self.concurrency), "-n", f"w{index}-{self.port}@%h"]
        if beat:
            args.append("--beat")
        process = self._spawn(f"worker{index}", *args)
        self.workers.append(process)
        log = self._logs[-1]
        wait_for(lambda: b" ready." in log.read_bytes(), timeout=30, what=f"worker {index} ready")
        return process

    def kill_worker(self, index: int = 0) -> None:
        """SIGKILL a worker and its pool processes at once: no shutdown, no acks, as in a crash."""
        process = self.workers[index]
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()

    def _ready(self) -> bool:
        try:
            return self.client.get("/readyz").status_code == 200
        except httpx.HTTPError:
            return False

    def post(self, form: str, data: dict[str, Any], **kwargs: Any) -> httpx.Response:
        return self.client.post(f"/forms/{form}", json=data, **kwargs)

    def logs(self) -> str:
        return "\n".join(
            f"--- {log.name}\n{log.read_text(errors='replace')[-6000:]}" for log in self._logs if log.exists()
        )

    def stop(self) -> None:
        self.client.close()
        processes = [p for p in [self.web, self.beat, *self.workers] if p is not None]
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    def __enter__(self) -> LeadsyncStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

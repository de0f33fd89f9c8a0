"""Shared benchmark plumbing: Redis + PostgreSQL, server processes, wrk, and peak RSS read from /proc.

Not a benchmark itself; bench/intake.py (and the worker, end_to_end and scale benchmarks) build on it.

Example:
    >>> with start_services() as services:
    ...     env = services.leadsync_env(services.database("leadsync"))
    ...     with Proc("web", [sys.executable, "-m", "leadsync", "web", "--port", "8000"], env, services.workdir) as web:
    ...         wait_http("http://127.0.0.1:8000/readyz", web)
    ...         with RssSampler({"web": web.pid}) as rss:
    ...             result = run_wrk("http://127.0.0.1:8000", BENCH / "post_form.lua", duration=10)
    ...         print(result.rps, result.p99_ms, rss.largest("web"))
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from tests.support.services import PostgresServer, RedisServer, descendants, free_port

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent

__all__ = [
    "BENCH",
    "ROOT",
    "Proc",
    "ProcPeak",
    "RssSampler",
    "Services",
    "WrkResult",
    "cpu_seconds",
    "descendants",
    "free_port",
    "memory_kb",
    "parse_wrk",
    "peak_rss",
    "run_wrk",
    "start_services",
    "wait_for_log",
    "wait_http",
]

BENCH_FORM_TOKEN_SECRET = "bench-form-token-secret-0123456789abcdef"  # web and worker refuse to start without one


# --------------------------------------------------------------------------- Redis + PostgreSQL


@dataclass
class Services:
    """A Redis and a PostgreSQL started for one benchmark run, and a scratch directory removed afterwards."""

    redis: RedisServer
    postgres: PostgresServer
    workdir: Path

    def database(self, name: str) -> str:
        """A fresh, empty PostgreSQL database; its SQLAlchemy URL."""
        return self.postgres.create_database(name)

    def redis_url(self, db: int = 0) -> str:
        return f"redis://{self.redis.host}:{self.redis.port}/{db}"

    def leadsync_env(self, database_url: str, redis_db: int = 0, **overrides: str) -> dict[str, str]:
        """Environment for leadsync processes on this Redis + PostgreSQL, as tests/conftest.py builds it.

        No HubSpot token (contacts wait as pending CRM sync) and no SMTP host (emails become .eml files
        under the run's VAR_DIR). Rate limits, spam and validation settings keep leadsync's defaults
        unless ``overrides`` sets them (e.g. ``RATE_LIMIT_PER_IP=""``).
        """
        env = {
            **os.environ,
            "VAR_DIR": str(self.workdir / "var"),
            "DATABASE_URL": database_url,
            "BROKER_URL": self.redis_url(redis_db),
            "HUBSPOT_ACCESS_TOKEN": "",
            "SMTP_HOST": "",
            # No SMTP_HOST: the embedded outbox, which only dev mode may start with; a fixed secret, since
            # `leadsync web|worker` refuse to start without one (README, Commands).
            "DEV_MODE": "1",
            "FORM_TOKEN_SECRET": BENCH_FORM_TOKEN_SECRET,
            "PYTHONUNBUFFERED": "1",
        }
        env.update(overrides)
        return env


@contextlib.contextmanager
def start_services(prefix: str = "leadsync-bench-", durable: bool = True, keep: bool = False) -> Iterator[Services]:
    """Start Redis and PostgreSQL on free loopback ports (tests/support/services.py); stop and delete on exit.

    ``durable`` (default): PostgreSQL's own defaults, a COMMIT waits for the WAL flush as in production;
    False: the test suite's fsync-off server, faster than any real deployment. ``keep``: leave the scratch
    directory (process logs, leadsync's VAR_DIR) in place for a look afterwards.
    """
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        with RedisServer() as redis, PostgresServer(durable=durable) as postgres:
            yield Services(redis, postgres, workdir)
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)


# --------------------------------------------------------------------------- processes

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn: the child gets SIGTERM when this process dies (even by SIGKILL); main thread only."""
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    parent = os.getpid()

    def preexec() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return preexec


def memory_kb(pid: int) -> tuple[int, int] | None:
    """(VmRSS, VmHWM) of a process in kB, from /proc/PID/status; None once it is gone (or a zombie)."""
    try:
        text = Path("/proc", str(pid), "status").read_text()
    except OSError:
        return None
    values = dict(re.findall(r"^(VmRSS|VmHWM):\s+(\d+) kB", text, re.MULTILINE))
    if "VmHWM" not in values:
        return None
    return int(values.get("VmRSS", 0)), int(values["VmHWM"])


def peak_rss(pid: int) -> int | None:
    """The peak resident set size (VmHWM) of one process so far, in kB."""
    memory = memory_kb(pid)
    return memory[1] if memory else None


_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time a process has used so far (from /proc/PID/stat); None once it is gone."""
    try:
        raw = Path("/proc", str(pid), "stat").read_text()
    except OSError:
        return None
    fields = raw.rsplit(")", 1)[1].split()  # state is fields[0]; utime and stime are stat fields 14 and 15
    return (int(fields[11]) + int(fields[12])) / _TICKS


def _cmdline(pid: int) -> str:
    try:
        raw = Path("/proc", str(pid), "cmdline").read_bytes()
    except OSError:
        return "?"
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


class Proc:
    """A server command in its own session (so Ctrl-C stays with us), logging to ``<workdir>/<name>.log``.

    ``stop()`` sends SIGTERM (graceful), then SIGKILLs the whole process group and any descendant left;
    it also runs on context exit, and the child gets SIGTERM if this process dies.
    """

    def __init__(self, name: str, argv: list[str], env: dict[str, str], workdir: Path, cwd: Path | None = None) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.cwd = cwd or workdir
        self.log_path = workdir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None, f"{self.name} not started"
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> Self:
        self.cwd.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent(),
            )
        return self

    def log_tail(self, limit: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-limit:]
        except OSError as error:
            return f"(no log: {error})"

    def stop(self, timeout: float = 15.0) -> None:
        process = self.process
        if process is None:
            return
        tree = descendants(process.pid) if process.poll() is None else []
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)  # pool processes that outlived their parent, or a hung one
        for pid in tree:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        process.wait()

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def wait_http(url: str, proc: Proc | None = None, timeout: float = 60.0, any_status: bool = False) -> None:
    """Poll ``url`` until it answers 2xx (any HTTP status with ``any_status``: the server is up); RuntimeError
    (with the log tail) if ``proc`` exits or time runs out."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive:
            raise RuntimeError(f"{proc.name} exited while starting; log {proc.log_path}:\n{proc.log_tail()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if 200 <= response.status < 300:
                    return
                last = response.status
        except urllib.error.HTTPError as error:
            if any_status:
                return
            last = error
        except (urllib.error.URLError, OSError) as error:
            last = error
        time.sleep(0.1)
    tail = f"; log {proc.log_path}:\n{proc.log_tail()}" if proc is not None else ""
    raise RuntimeError(f"{url} did not answer within {timeout:.0f}s (last: {last}){tail}")


def wait_for_log(proc: Proc, text: str, timeout: float = 60.0) -> None:
    """Wait until ``text`` appears in the process's log (e.g. Celery's " ready.")."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive:
            raise RuntimeError(f"{proc.name} exited while starting; log {proc.log_path}:\n{proc.log_tail()}")
        if text in proc.log_tail(1_000_000):
            return
        time.sleep(0.1)
    raise RuntimeError(f"{proc.name}: no {text!r} in its log within {timeout:.0f}s:\n{proc.log_tail()}")


# --------------------------------------------------------------------------- peak RSS


@dataclass
class ProcPeak:
    """The largest memory seen for one process: its peak RSS (VmHWM, kept by the kernel) and RSS samples."""

    label: str
    pid: int
    role: str  # "main" for the root process, "child" for anything below it
    command: str
    hwm_kb: int = 0
    rss_kb: int = 0
    cpu_first: float = 0.0  # CPU seconds used when first sampled, and at the last sample
    cpu_last: float = 0.0

    @property
    def cpu_s(self) -> float:
        """CPU seconds used while sampled."""
        return self.cpu_last - self.cpu_first

    @property
    def peak_mb(self) -> float:
        return max(self.hwm_kb, self.rss_kb) / 1024


class RssSampler:
    """Samples every process under some root pids every ``interval`` seconds in a thread, keeping per-process
    peaks and the CPU time used while sampling.

    VmHWM is the kernel's own high-water mark, so a peak between two samples is not missed; sampling only
    has to see each process before it exits (and to pick up processes forked during the run).
    """

    def __init__(self, roots: dict[str, int], interval: float = 0.25) -> None:
        self.roots = roots
        self.interval = interval
        self.peaks: dict[int, ProcPeak] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)

    def sample(self) -> None:
        for label, root in self.roots.items():
            for pid in [root, *descendants(root)]:
                memory, cpu = memory_kb(pid), cpu_seconds(pid)
                if memory is None or cpu is None:
                    continue
                peak = self.peaks.get(pid)
                if peak is None:
                    role = "main" if pid == root else "child"
                    peak = self.peaks[pid] = ProcPeak(label, pid, role, _cmdline(pid)[:160], cpu_first=cpu)
                peak.cpu_last = cpu
                peak.rss_kb = max(peak.rss_kb, memory[0])
                peak.hwm_kb = max(peak.hwm_kb, memory[1])

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def start(self) -> Self:
        self.sample()
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self._stop.set()
            self._thread.join()
            self.sample()  # the last high-water marks, before the processes are stopped

    def of(self, label: str) -> list[ProcPeak]:
        """Peaks of one root's processes, the root first."""
        return sorted((p for p in self.peaks.values() if p.label == label), key=lambda p: (p.role != "main", p.pid))

    def largest(self, label: str) -> ProcPeak | None:
        return max(self.of(label), key=lambda p: p.peak_mb, default=None)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


# --------------------------------------------------------------------------- wrk


@dataclass
class WrkResult:
    """What one wrk run measured; latencies in milliseconds. ``statuses`` needs a script like post_form.lua."""

    requests: int
    seconds: float
    latency_ms: dict[str, float]
    socket_errors: dict[str, int]
    statuses: dict[int, int] = field(default_factory=dict)
    output: str = ""

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def p50_ms(self) -> float:
        return self.latency_ms.get("p50", float("nan"))

    @property
    def p99_ms(self) -> float:
        return self.latency_ms.get("p99", float("nan"))

    def count(self, status: int) -> int:
        return self.statuses.get(status, 0)

    def errors(self, expected: int = 202) -> int:
        """Socket errors (connect, read, write, timeout) plus every answer whose status is not ``expected``."""
        sockets = sum(v for k, v in self.socket_errors.items() if k != "status")
        return sockets + sum(count for status, count in self.statuses.items() if status != expected)


_BENCH_LINE = re.compile(r"^BENCH (\S+) (.*)$", re.MULTILINE)


def parse_wrk(output: str) -> WrkResult:
    """Parse the BENCH lines that post_form.lua's done() prints (wrk's own report is kept as ``output``)."""
    requests, seconds = 0, 0.0
    latency: dict[str, float] = {}
    errors: dict[str, int] = {}
    statuses: dict[int, int] = {}
    for kind, rest in _BENCH_LINE.findall(output):
        if kind == "status":
            code, count = rest.split()
            statuses[int(code)] = int(count)
        elif kind == "summary":
            values = {key: int(value) for key, value in (item.split("=") for item in rest.split())}
            requests, seconds = values.pop("requests"), values.pop("duration_us") / 1e6
            errors = values
        elif kind == "latency_us":
            name, micros = rest.split()
            latency[name] = int(micros) / 1000
    if not seconds:
        raise ValueError(f"no BENCH summary in wrk's output (is the script's done() there?):\n{output}")
    return WrkResult(requests, seconds, latency, errors, statuses, output)


def run_wrk(
    url: str,
    script: Path,
    duration: float,
    connections: int = 64,
    threads: int = 2,
    script_args: list[str] | None = None,
    timeout: float = 10.0,
) -> WrkResult:
    """``wrk -t -c -d --latency -s script url -- args``; a request slower than ``timeout`` s counts as an error."""
    wrk = shutil.which("wrk")
    if wrk is None:
        raise RuntimeError("wrk is not installed: apt-get install wrk (./bench/run installs it)")
    command = [
        wrk,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        f"--timeout={max(1, round(timeout))}s",
        "--latency",
        "-s",
        str(script),
        url,
    ]
    if script_args:
        command += ["--", *script_args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=duration + timeout + 60, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed with code {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return parse_wrk(done.stdout)


def print_verdicts(figures: dict[str, Any], checks: list[tuple[bool, str]], json_path: Path | None) -> bool:
    """Print the figures as JSON and a PASS/FAIL line a check; write both to `json_path`; True if all passed."""
    print(json.dumps(figures, indent=2))
    for ok, text in checks:
        print(("PASS " if ok else "FAIL ") + text)
    if json_path is not None:
        verdicts = [{"passed": ok, "text": text} for ok, text in checks]
        json_path.write_text(json.dumps({"figures": figures, "checks": verdicts}, indent=2) + "\n")
    return all(ok for ok, _ in checks)

"""Real Redis, PostgreSQL and SMTP servers for integration tests, each on a free loopback port.

Why: the worker's guarantees (durable intake, retries, exactly one email) only mean something
against the real broker, database and mail server, so tests start real ones instead of mocks.
No docker: the processes run straight from the Debian packages that
``scripts/install-test-services.sh`` installs. A missing binary raises ``RuntimeError`` (tests
fail, never skip). Every server is a context manager; an ``atexit`` hook and a parent-death
signal stop whatever a crashed test run left behind.

PostgreSQL refuses to run as root, so as root ``initdb`` and ``postgres`` run as the ``postgres``
user (else ``nobody``) via ``subprocess.Popen(user=...)``. That execs the server directly
(unlike ``runuser``, which stays in between as a parent), so our signals reach the postmaster.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ctypes
import email
import email.policy
import functools
import logging
import os
import pwd
import re
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self, cast

INSTALL_HINT = "run `bash scripts/install-test-services.sh` as root (installs redis-server and postgresql)"
LOOPBACK = "127.0.0.1"
PG_VERSIONS_ROOT = Path("/usr/lib/postgresql")

__all__ = [
    "INSTALL_HINT",
    "PostgresServer",
    "ReceivedMail",
    "RedisServer",
    "SmtpSink",
    "TestCertificate",
    "find_binary",
    "free_port",
    "make_test_certificate",
]


# --------------------------------------------------------------------------- helpers

_ports_lock = threading.Lock()
_ports_handed_out: set[int] = set()


def free_port() -> int:
    """A loopback TCP port that nothing listens on now and that this process never handed out before.

    Remembering handed-out ports keeps two servers of one test run from racing for the same port
    (the kernel may offer a just-closed port again).
    """
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((LOOPBACK, 0))
            port = int(sock.getsockname()[1])
        with _ports_lock:
            if port not in _ports_handed_out:
                _ports_handed_out.add(port)
                return port
    raise RuntimeError("could not find a free TCP port on 127.0.0.1")


def _pg_bin_dirs() -> list[Path]:
    """``/usr/lib/postgresql/<version>/bin`` directories, newest version first."""

    def version(path: Path) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"\d+", path.parent.name)) or (0,)

    return sorted((p for p in PG_VERSIONS_ROOT.glob("*/bin") if p.is_dir()), key=version, reverse=True)


def find_binary(name: str) -> str | None:
    """Path of an executable from PATH, else from ``/usr/lib/postgresql/*/bin`` (newest first).

    Debian keeps initdb/postgres out of PATH, hence the second place to look.
    """
    found = shutil.which(name)
    if found:
        return found
    for bin_dir in _pg_bin_dirs():
        candidate = bin_dir / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def _require_binary(name: str) -> str:
    path = find_binary(name)
    if path is None:
        raise RuntimeError(f"`{name}` not found in PATH nor in {PG_VERSIONS_ROOT}/*/bin; {INSTALL_HINT}")
    return path


def _tail(path: Path, limit: int = 4000, offset: int = 0) -> str:
    """The end of a server log (from byte ``offset`` on), for error messages."""
    try:
        with open(path, "rb") as log:
            log.seek(offset)
            text = log.read().decode(errors="replace")
    except OSError as exc:
        return f"(no log: {exc})"
    return text[-limit:] if text.strip() else "(log is empty)"


def _world_traversable(path: Path) -> bool:
    """Whether any user can reach ``path``: the unprivileged postgres user must get to its data dir."""
    for part in [path, *path.parents]:
        try:
            if not os.stat(part).st_mode & stat.S_IXOTH:
                return False
        except OSError:
            return False
    return True


def _make_temp_dir(prefix: str, owner: pwd.struct_passwd | None = None) -> Path:
    """A fresh temp dir (mode 0700), owned by ``owner`` when given.

    Falls back to /tmp when $TMPDIR is not reachable by ``owner`` or too long for a unix
    socket path (108 bytes).
    """
    base = Path(tempfile.gettempdir())
    if (owner is not None and not _world_traversable(base)) or len(str(base)) > 60:
        base = Path("/tmp")
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
    if owner is not None:
        os.chown(path, owner.pw_uid, owner.pw_gid)
    return path


def descendants(root: int) -> list[int]:
    """Pids of every process below ``root`` (Linux /proc), children first."""
    children: dict[int, list[int]] = {}
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                raw = Path("/proc", entry.name, "stat").read_text()
            except OSError:
                continue
            # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
            ppid = int(raw.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    result: list[int] = []
    todo = [root]
    while todo:
        kids = children.get(todo.pop(), [])
        result.extend(kids)
        todo.extend(kids)
    return result


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie has released its port and shared memory: not alive)."""
    try:
        raw = Path("/proc", str(pid), "stat").read_text()
    except OSError:
        return False
    return raw.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _kill_tree(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGKILL a server and everything it forked, and wait until all of them are gone.

    Postgres children call setsid(), so a process-group kill would miss them; survivors would
    keep the shared memory and make the next start fail. The server is frozen first so that it
    forks nothing new while its children are listed.
    """
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGSTOP)
    kids = descendants(proc.pid)
    for pid in kids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout)
    deadline = time.monotonic() + timeout
    while any(_alive(pid) for pid in kids) and time.monotonic() < deadline:
        time.sleep(0.01)


_PR_SET_PDEATHSIG = 1
_libc: Any = None
if sys.platform.startswith("linux"):
    with contextlib.suppress(OSError):
        _libc = ctypes.CDLL(None, use_errno=True)


def _parent_death_signal(sig: signal.Signals) -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the kernel send ``sig`` to the server when this process dies.

    Covers what atexit cannot (pytest killed by SIGKILL or SIGTERM). The kernel ties the signal to
    the spawning *thread*, so it is only set when spawning from the main thread.
    """
    if _libc is None or threading.current_thread() is not threading.main_thread():
        return None
    prctl = _libc.prctl
    parent = os.getpid()

    def preexec() -> None:  # runs in the child after setuid (which would clear the setting)
        prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


# --------------------------------------------------------------------------- cleanup registry

_live_lock = threading.Lock()
_live: set[_Closable] = set()


class _Closable:
    """Something the atexit hook must close if a test run forgot to (or crashed)."""

    def start(self) -> Self:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    # A context manager: started on entry (closed again if the start fails), closed on exit.
    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _register(self) -> None:
        with _live_lock:
            _live.add(self)

    def _unregister(self) -> None:
        with _live_lock:
            _live.discard(self)


@atexit.register
def _close_all() -> None:
    """Safety net: no server and no temp dir outlives the Python process."""
    with _live_lock:
        leftovers = list(_live)
    for item in leftovers:
        with contextlib.suppress(Exception):
            item.close()


# --------------------------------------------------------------------------- process servers


class _ProcessServer(_Closable):
    """A server run as a child process on 127.0.0.1:``port``, in a temp dir of its own.

    ``stop()`` is graceful and keeps the temp dir (so ``start()`` again, on the same port, sees
    the same data); ``kill()`` is SIGKILL; ``close()`` stops and deletes the temp dir.
    """

    name = "server"
    stop_signal = signal.SIGTERM
    start_timeout = 30.0
    stop_timeout = 15.0

    def __init__(self, port: int | None = None) -> None:
        self._chosen_port = port is None
        self.port: int = port if port is not None else free_port()
        self.host = LOOPBACK
        self.dir: Path | None = None
        self.start_seconds: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.RLock()

    # subclass hooks --------------------------------------------------------
    def _prepare(self) -> None:
        """Create ``self.dir`` (and whatever the server needs in it) once."""
        self.dir = _make_temp_dir(f"leadsync-{self.name}-")

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _ready(self) -> bool:
        raise NotImplementedError

    def _run_as(self) -> pwd.struct_passwd | None:
        return None

    # -----------------------------------------------------------------------
    @property
    def log_path(self) -> Path:
        assert self.dir is not None, "not started yet"
        return self.dir / f"{self.name}.log"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.running and self._proc else None

    def _popen_kwargs(self) -> dict[str, Any]:
        env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
        kwargs: dict[str, Any] = {"env": env, "cwd": self.dir}
        user = self._run_as()
        if user is not None:
            env.update(HOME=str(self.dir), USER=user.pw_name, LOGNAME=user.pw_name)
            kwargs.update(user=user.pw_uid, group=user.pw_gid, extra_groups=[])
        return kwargs

    def start(self) -> Self:
        """Start the server and wait until it answers; raise with its log if it does not."""
        with self._lock:
            if self.running:
                return self
            if self.dir is None:
                self._prepare()
            attempts = 3 if self._chosen_port and self.start_seconds is None else 1
            for attempt in range(attempts):
                try:
                    self._spawn_and_wait()
                    break
                except _PortTaken:
                    # Someone took the port between free_port() and bind(). Moving is only fine
                    # before the first start: restart() promises the same port.
                    if attempt == attempts - 1:
                        raise
                    self.port = free_port()
            return self

    def _spawn_and_wait(self) -> None:
        started = time.monotonic()
        with open(self.log_path, "ab") as log:
            log_offset = log.tell()
            self._proc = subprocess.Popen(
                self._command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C in the terminal is for pytest; fixtures stop us
                preexec_fn=_parent_death_signal(self.stop_signal),
                **self._popen_kwargs(),
            )
        self._register()
        deadline = started + self.start_timeout
        while True:
            code = self._proc.poll()
            if code is not None:
                self._proc = None
                if "Address already in use" in _tail(self.log_path, offset=log_offset):
                    raise _PortTaken(
                        f"{self.name} could not bind port {self.port}; log {self.log_path}:\n"
                        f"{_tail(self.log_path, offset=log_offset)}"
                    )
                raise RuntimeError(
                    f"{self.name} exited with code {code} while starting on port {self.port}; "
                    f"log {self.log_path}:\n{_tail(self.log_path)}"
                )
            if self._ready():
                self.start_seconds = time.monotonic() - started
                return
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(
                    f"{self.name} did not answer on {self.host}:{self.port} within "
                    f"{self.start_timeout:.0f}s; log {self.log_path}:\n{_tail(self.log_path)}"
                )
            time.sleep(0.02)

    def stop(self) -> None:
        """Graceful shutdown (SIGKILL after ``stop_timeout``); the data dir is kept."""
        with self._lock:
            proc = self._proc
            if proc is None:
                return
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(self.stop_signal)
                try:
                    proc.wait(self.stop_timeout)
                except subprocess.TimeoutExpired:
                    _kill_tree(proc)
            self._proc = None

    def kill(self) -> None:
        """SIGKILL the server and its children: a crash, for fault-injection tests."""
        with self._lock:
            if self._proc is not None:
                _kill_tree(self._proc)
            self._proc = None

    def restart(self) -> None:
        """Stop gracefully and start again on the same port with the same data dir."""
        with self._lock:
            self.stop()
            self.start()

    def close(self) -> None:
        """Stop the server and delete its temp dir."""
        with self._lock:
            try:
                self.stop()
            finally:
                if self.dir is not None:
                    shutil.rmtree(self.dir, ignore_errors=True)
                    self.dir = None
                self._unregister()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<{type(self).__name__} {self.host}:{self.port} {state}>"


class _PortTaken(RuntimeError):
    """The server could not bind its port."""


class RedisServer(_ProcessServer):
    """``redis-server`` on 127.0.0.1, without persistence: a restart starts empty."""

    name = "redis"

    def __init__(self, port: int | None = None) -> None:
        self.binary = _require_binary("redis-server")
        super().__init__(port)

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def _command(self) -> list[str]:
        assert self.dir is not None
        return [
            self.binary,
            "--bind", self.host,
            "--port", str(self.port),
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.dir),
            "--daemonize", "no",
            "--logfile", "",  # stdout, which goes to redis.log
        ]  # fmt: skip

    def _ready(self) -> bool:
        """PING answers +PONG (not -LOADING or a refused connection)."""
        try:
            with socket.create_connection((self.host, self.port), timeout=1.0) as sock:
                sock.sendall(b"*1\r\n$4\r\nPING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False


class PostgresServer(_ProcessServer):
    """PostgreSQL on 127.0.0.1 from a fresh ``initdb`` cluster: trust auth, fsync off.

    ``durable=True`` keeps PostgreSQL's own defaults (fsync, synchronous commit), for benchmarks
    whose figures must include the cost of a commit that survives a power cut.

    The cluster is made once per instance (about half a second) and survives stop/restart/kill;
    ``close()`` deletes it. The unix socket lives in the temp dir, the superuser is ``postgres``.
    """

    name = "postgres"
    stop_signal = signal.SIGINT  # "fast" shutdown: SIGTERM ("smart") would wait for pooled clients
    user = "postgres"
    dbname = "postgres"

    def __init__(self, port: int | None = None, durable: bool = False) -> None:
        self.durable = durable
        self.initdb_binary = _require_binary("initdb")
        # The server must come from the same version as initdb (PATH may hold a symlink).
        sibling = Path(os.path.realpath(self.initdb_binary)).with_name("postgres")
        self.binary = str(sibling) if sibling.is_file() else _require_binary("postgres")
        self.initdb_seconds: float | None = None
        self._os_user = self._pick_os_user()
        super().__init__(port)

    @staticmethod
    def _pick_os_user() -> pwd.struct_passwd | None:
        """Who runs postgres: ourselves, or as root the ``postgres`` user, else ``nobody``."""
        if os.geteuid() != 0:
            return None
        for name in ("postgres", "nobody"):
            with contextlib.suppress(KeyError):
                return pwd.getpwnam(name)
        raise RuntimeError(
            "running as root, but there is neither a 'postgres' nor a 'nobody' user to run "
            f"PostgreSQL as (it refuses root); {INSTALL_HINT}"
        )

    def _run_as(self) -> pwd.struct_passwd | None:
        return self._os_user

    @property
    def data_dir(self) -> Path:
        assert self.dir is not None, "not started yet"
        return self.dir / "data"

    def _prepare(self) -> None:
        self.dir = _make_temp_dir("leadsync-postgres-", owner=self._os_user)
        self._register()  # the temp dir alone is worth cleaning up
        started = time.monotonic()
        result = subprocess.run(
            [
                self.initdb_binary,
                "--pgdata", str(self.data_dir),
                "--auth", "trust",
                "--username", self.user,
                "--encoding", "UTF8",
                "--no-locale",
                "--no-sync",
                "--no-instructions",
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            **self._popen_kwargs(),
        )  # fmt: skip
        if result.returncode != 0:
            raise RuntimeError(
                f"initdb failed with code {result.returncode} (as "
                f"{self._os_user.pw_name if self._os_user else 'current user'}):\n"
                f"{result.stdout}\n{result.stderr}"
            )
        self.initdb_seconds = time.monotonic() - started

    def _command(self) -> list[str]:
        assert self.dir is not None
        settings = {
            "listen_addresses": self.host,
            "unix_socket_directories": str(self.dir),
            "logging_collector": "off",
            "TimeZone": "UTC",
            "log_timezone": "UTC",
        }
        if not self.durable:  # tests need speed, not crash safety
            settings.update({"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"})
        command = [self.binary, "-D", str(self.data_dir), "-p", str(self.port)]
        for key, value in settings.items():
            command += ["-c", f"{key}={value}"]
        return command

    def _ready(self) -> bool:
        import psycopg

        try:
            with psycopg.connect(self.dsn(), connect_timeout=2) as conn:
                conn.execute("SELECT 1")
            return True
        except psycopg.OperationalError:
            return False

    def dsn(self, dbname: str | None = None) -> str:
        """libpq conninfo, for psycopg and psql."""
        return f"host={self.host} port={self.port} user={self.user} dbname={dbname or self.dbname}"

    def url_for(self, dbname: str) -> str:
        """SQLAlchemy URL of a database on this server."""
        return f"postgresql+psycopg://{self.user}@{self.host}:{self.port}/{dbname}"

    @property
    def url(self) -> str:
        return self.url_for(self.dbname)

    def create_database(self, name: str) -> str:
        """Create an empty database (dropping a leftover one of that name); return its URL."""
        import psycopg
        from psycopg import sql

        self.drop_database(name)
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url_for(name)

    def drop_database(self, name: str) -> None:
        """Drop a database if it exists, disconnecting its clients (WITH FORCE)."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


# --------------------------------------------------------------------------- SMTP


@dataclass(frozen=True)
class ReceivedMail:
    """One accepted message with its envelope (who the client said it is from and to)."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    message: EmailMessage
    raw: bytes  # the DATA exactly as received (dot-unstuffed), CRLF line ends: what tests check on the wire
    tls: bool = False  # the conversation was encrypted (STARTTLS or implicit TLS) when MAIL came
    authenticated: bool = False  # the client had logged in (AUTH) when MAIL came


@dataclass
class _Failure:
    remaining: int
    reply: str
    stage: Literal["RCPT", "DATA"]


class _SinkHandler:
    """aiosmtpd handler (hook names are aiosmtpd's); runs in the controller's event-loop thread."""

    def __init__(self, sink: SmtpSink) -> None:
        self.sink = sink

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        """Offer PIPELINING as Postfix, Exim and Gmail do (RFC 2920): aiosmtpd reads commands one line at a time
        from its stream, so commands that arrive together are answered in order, as the RFC asks."""
        session.host_name = hostname
        if not self.sink.pipelining:
            return responses
        return [*responses[:-1], "250-PIPELINING", responses[-1]]

    async def handle_MAIL(self, server: Any, session: Any, envelope: Any, address: str, mail_options: list[str]) -> str:
        if self.sink._drops_at("MAIL"):
            server.transport.close()  # no reply: the client finds the connection gone
            return "421 4.4.2 Connection dropped by the test"
        if self.sink.auth is not None and not session.authenticated:
            return "530 5.7.0 Authentication required"
        envelope.sink_tls = server.transport.get_extra_info("ssl_object") is not None
        envelope.sink_authenticated = bool(session.authenticated)
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]) -> str:
        await self.sink._pass_gate()
        reply = self.sink._failure_for("RCPT", envelope)
        if reply is not None:
            return reply
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        reply = self.sink._failure_for("DATA", envelope)
        if reply is not None:
            return reply
        if self.sink._drops_at("DATA"):
            server.transport.close()  # the whole message was sent, none of it kept, and no reply comes
            return "421 4.4.2 Connection dropped by the test"
        self.sink._deliver(envelope)
        return "250 Message accepted for delivery"


_RECORDED_VERBS = ("HELO", "EHLO", "STARTTLS", "AUTH", "MAIL", "RCPT", "DATA", "RSET")
_SMTP_LOG = "mail.log"  # aiosmtpd's logger


def _quiet_aiosmtpd_log() -> Path:
    """aiosmtpd logs ~10 INFO lines per connection: only its warnings and errors are kept, in a file and in a
    failing test's report. pytest 9 captures a non-propagating logger's records too, so `propagate = False`
    alone let 2,000 connection lines into the report of a failed 200-post drill; what the server received is
    in `SmtpSink.received` and `.commands` instead."""
    logger = logging.getLogger(_SMTP_LOG)
    logger.setLevel(logging.WARNING)
    for handler in logger.handlers:
        if isinstance(handler, logging.FileHandler):
            return Path(handler.baseFilename)
    directory = _make_temp_dir("leadsync-smtp-log-")
    # One a process, removed when it ends: a failing test's report has read the lines by then (300 of these
    # were left in /tmp by a day of test and benchmark runs).
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    path = directory / "aiosmtpd.log"
    handler = logging.FileHandler(path, delay=True)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger.addHandler(handler)
    logger.propagate = False
    return path


@functools.cache
def _recording_smtp_class() -> type:
    """aiosmtpd's SMTP that notes each command verb on the sink (`SmtpSink.commands`), before handling it."""
    from aiosmtpd.smtp import SMTP

    def recording(verb: str) -> Callable[..., Any]:
        parent = getattr(SMTP, f"smtp_{verb}")

        @functools.wraps(parent)  # keeps aiosmtpd's syntax markers (STARTTLS is offered only with TLS set up)
        async def method(self: Any, arg: str | None) -> Any:
            self.sink_commands.append(verb)
            if self._reader._buffer:  # more input already waits: the client sent on without this reply
                self.sink.early.append(verb)
                if not self.sink.pipelining:  # as Postfix (smtpd_forbid_unauth_pipelining, on since 3.9)
                    await self.push("554 5.5.0 Error: improper command pipelining")
                    self.transport.close()
                    return None
            return await parent(self, arg)

        return method

    namespace: dict[str, Any] = {f"smtp_{verb}": recording(verb) for verb in _RECORDED_VERBS}
    return type("RecordingSMTP", (SMTP,), namespace)


def make_test_certificate(folder: Path, names: tuple[str, ...] = ("localhost", LOOPBACK)) -> TestCertificate:
    """A throwaway private CA and a server certificate it signed for `names` (DNS names or IPs), via openssl.

    Why a CA and not one self-signed certificate: that is what SMTP_CA_FILE is for in production (a
    relay with a certificate from a private CA); the client trusts the CA file, the server shows the leaf.
    """
    openssl = _require_binary("openssl")
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, ca, key, csr, cert = (folder / n for n in ("ca.key", "ca.pem", "server.key", "server.csr", "server.pem"))
    alt = ",".join(f"IP:{n}" if re.fullmatch(r"[0-9.]+|[0-9a-fA-F:]+:[0-9a-fA-F:]*", n) else f"DNS:{n}" for n in names)
    extensions = folder / "server.ext"
    extensions.write_text(
        f"subjectAltName={alt}\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n"
    )
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    for command in (
        [openssl, "req", "-x509", *ec, "-days", "2", "-subj", "/CN=leadsync test CA", "-keyout", str(ca_key),
         "-out", str(ca), "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
        [openssl, "req", *ec, "-subj", f"/CN={names[0]}", "-keyout", str(key), "-out", str(csr)],
        [openssl, "x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
         "-days", "2", "-out", str(cert), "-extfile", str(extensions)],
    ):  # fmt: skip
        subprocess.run(command, check=True, capture_output=True, timeout=60)
    return TestCertificate(ca=ca, cert=cert, key=key)


@dataclass(frozen=True)
class TestCertificate:
    """PEM files: `ca` is what a client trusts (SMTP_CA_FILE); `cert` + `key` are what the server shows."""

    __test__ = False  # not a pytest test class, despite the name
    ca: Path
    cert: Path
    key: Path


class SmtpSink(_Closable):
    """An in-process SMTP server (aiosmtpd) that keeps every message it accepts, as raw bytes too.

    ``fail_next`` makes it answer the next messages with a 4xx/5xx code, to test the worker's
    retry on temporary failures and its giving up on permanent ones. With ``auth=(user,
    password)`` it requires AUTH PLAIN/LOGIN from clients before MAIL. ``tls``: ``"none"`` (plain,
    AUTH offered in clear), ``"starttls"`` (STARTTLS offered and required before anything else, AUTH
    only after it) or ``"implicit"`` (TLS from the first byte, as on port 465), with ``certificate``
    (see ``make_test_certificate``). ``pipelining``: PIPELINING is offered in the EHLO answer (RFC 2920), as
    relays do; False for a server without it, which then refuses a client that pipelines anyway, as Postfix
    does. ``commands`` lists the command verbs clients sent, in order; ``early`` those that arrived before the
    reply to the command ahead of them (pipelined).
    aiosmtpd's own log goes to ``log_path``.
    """

    def __init__(
        self,
        port: int | None = None,
        auth: tuple[str, str] | None = None,
        tls: Literal["none", "starttls", "implicit"] = "none",
        certificate: TestCertificate | None = None,
        pipelining: bool = True,
    ) -> None:
        if (tls == "none") != (certificate is None):
            raise ValueError("a certificate is needed for tls='starttls'/'implicit', and only then")
        self.host = LOOPBACK
        self.port: int = port if port is not None else free_port()
        self.auth = auth
        self.tls = tls
        self.certificate = certificate
        self.pipelining = pipelining
        self.commands: list[str] = []
        self.early: list[str] = []  # verbs that arrived before the reply to the command ahead of them
        self.log_path = _quiet_aiosmtpd_log()
        self._received: list[ReceivedMail] = []
        self.rejections = 0
        self._cond = threading.Condition()
        self._failure: _Failure | None = None
        self._drop: list[Any] | None = None  # [stage, accepted messages still to let through]
        self._gate = threading.Event()
        self._gate.set()
        self._held = 0
        self._controller: Any = None

    @property
    def running(self) -> bool:
        return self._controller is not None

    def start(self) -> Self:
        """Listen on ``port``; returns once the server answers."""
        from aiosmtpd.controller import Controller

        if self._controller is not None:
            return self
        kwargs: dict[str, Any] = {}
        if self.auth is not None:
            # MAIL without login is refused in the handler, not through auth_required, which warns about
            # the missing TLS on every connection. Implicit TLS: aiosmtpd only knows about STARTTLS, so
            # auth_require_tls would refuse AUTH on a connection that is encrypted from the start.
            kwargs.update(authenticator=self._authenticate, auth_require_tls=self.tls == "starttls")
        ssl_context = None
        if self.certificate is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)  # a server: no client certificates
            context.load_cert_chain(self.certificate.cert, self.certificate.key)
            if self.tls == "starttls":
                kwargs.update(tls_context=context, require_starttls=True)
            else:
                ssl_context = context
        sink = self

        class RecordingController(Controller):  # type: ignore[misc]
            def factory(self) -> Any:
                server = _recording_smtp_class()(self.handler, **self.SMTP_kwargs)
                server.sink_commands = sink.commands
                server.sink = sink
                return server

        controller = RecordingController(
            _SinkHandler(self),
            hostname=self.host,
            port=self.port,
            server_hostname="smtp-sink.test",
            ssl_context=ssl_context,
            **kwargs,
        )
        controller.start()
        self._controller = controller
        self._register()
        return self

    def stop(self) -> None:
        """Stop listening (connections get refused); received messages are kept."""
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def restart(self) -> None:
        """Stop, then listen again on the same port."""
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        self._unregister()

    def _authenticate(self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> Any:
        from aiosmtpd.smtp import AuthResult, LoginPassword

        ok = isinstance(auth_data, LoginPassword) and (
            (auth_data.login.decode(), auth_data.password.decode()) == self.auth
        )
        # handled=False: let aiosmtpd answer 535 itself (else the client waits for a reply).
        return AuthResult(success=ok, handled=False, auth_data=auth_data)

    # messages --------------------------------------------------------------
    @property
    def received(self) -> list[ReceivedMail]:
        """A snapshot of the accepted messages with their envelopes, oldest first."""
        with self._cond:
            return list(self._received)

    @property
    def messages(self) -> list[EmailMessage]:
        """A snapshot of the accepted messages, oldest first."""
        with self._cond:
            return [mail.message for mail in self._received]

    def wait_for(self, count: int, timeout: float = 10.0) -> list[EmailMessage]:
        """Block until at least ``count`` messages arrived; return them all (AssertionError on timeout)."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self._received) >= count, timeout):
                raise AssertionError(
                    f"expected {count} message(s) on {self.host}:{self.port} within {timeout}s, "
                    f"got {len(self._received)}"
                )
            return [mail.message for mail in self._received]

    def clear(self) -> None:
        """Forget received messages, rejection count and pending failures."""
        with self._cond:
            self._received.clear()
            self.commands.clear()
            self.early.clear()
            self.rejections = 0
            self._failure = None

    def fail_next(
        self,
        n: int,
        code: int = 451,
        text: str = "4.3.0 Try again later",
        at: Literal["DATA", "RCPT"] = "DATA",
    ) -> None:
        """Answer the next ``n`` messages with ``code text`` at DATA (or at RCPT, for all recipients).

        4xx is a temporary failure (the sender should retry), 5xx a permanent one.
        """
        if not 400 <= code <= 599:
            raise ValueError(f"SMTP failure codes are 4xx or 5xx, not {code}")
        if at not in ("DATA", "RCPT"):
            raise ValueError(f"at must be 'DATA' or 'RCPT', not {at!r}")
        with self._cond:
            self._failure = _Failure(n, f"{code} {text}", at) if n > 0 else None

    def hold(self) -> None:
        """Keep every new conversation waiting at RCPT (before any message is accepted) until `release`.

        Lets a test kill a sender while its sends are certainly in flight and certainly not delivered.
        """
        self._gate.clear()

    def release(self) -> None:
        self._gate.set()

    @property
    def held(self) -> int:
        """How many conversations are waiting at the gate now."""
        return self._held

    async def _pass_gate(self) -> None:
        if self._gate.is_set():
            return
        self._held += 1
        try:
            while not self._gate.is_set():
                await asyncio.sleep(0.02)
        finally:
            self._held -= 1

    def drop_connection(self, after: int, at: Literal["MAIL", "DATA"] = "MAIL") -> None:
        """Once ``after`` more messages are accepted, close the client's connection without a reply: at the
        next message's MAIL (a relay that closed a used connection: nothing of that message arrives), or at
        the end of its DATA (the message was sent whole, is not kept, and the client cannot tell)."""
        with self._cond:
            self._drop = [at, after]

    def _drops_at(self, stage: str) -> bool:
        with self._cond:
            if self._drop is None or self._drop[0] != stage or self._drop[1] > 0:
                return False
            self._drop = None
            return True

    def _failure_for(self, stage: str, envelope: Any) -> str | None:
        """The failure reply for this command, if one is pending; one message uses up one failure."""
        reply: str | None = getattr(envelope, "_sink_failure", None)
        if reply is not None:  # a further RCPT of a message already being refused
            return reply
        with self._cond:
            failure = self._failure
            if failure is None or failure.stage != stage:
                return None
            failure.remaining -= 1
            if failure.remaining <= 0:
                self._failure = None
            self.rejections += 1
        envelope._sink_failure = failure.reply
        return failure.reply

    def _deliver(self, envelope: Any) -> None:
        raw: bytes = envelope.original_content or envelope.content
        message = cast(EmailMessage, email.message_from_bytes(raw, policy=email.policy.default))
        mail = ReceivedMail(
            envelope.mail_from,
            tuple(envelope.rcpt_tos),
            message,
            raw,
            tls=getattr(envelope, "sink_tls", False),
            authenticated=getattr(envelope, "sink_authenticated", False),
        )
        with self._cond:
            self._received.append(mail)
            if self._drop is not None:
                self._drop[1] -= 1
            self._cond.notify_all()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<SmtpSink {self.host}:{self.port} {state}, {len(self._received)} message(s)>"

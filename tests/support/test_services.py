"""Checks that tests/support/services.py starts real servers and can break and revive them.

Why: every integration test builds on these helpers, so they are tested against the real
redis-server, PostgreSQL and an SMTP client, with no mocks.
"""

from __future__ import annotations

import os
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.support import services
from tests.support.services import PostgresServer, RedisServer, SmtpSink, find_binary, free_port

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]


def _refuses_connections(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def _pid_gone(pid: int, timeout: float = 5.0) -> bool:
    """Whether ``pid`` has exited (a zombie counts as exited) within ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.02)
    return False


# --------------------------------------------------------------------------- helpers


def test_find_binary_finds_the_servers_and_none_for_unknown_names() -> None:
    assert find_binary("redis-server"), "run scripts/install-test-services.sh"
    initdb = find_binary("initdb")
    assert initdb and os.access(initdb, os.X_OK)
    assert find_binary("no-such-binary-leadsync") is None


def test_free_port_hands_out_distinct_bindable_ports() -> None:
    ports = {free_port() for _ in range(5)}
    assert len(ports) == 5
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", ports.pop()))


def test_missing_binary_fails_loudly_naming_the_install_script(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(services, "PG_VERSIONS_ROOT", tmp_path)
    with pytest.raises(RuntimeError, match=r"scripts/install-test-services\.sh"):
        RedisServer()
    with pytest.raises(RuntimeError, match=r"scripts/install-test-services\.sh"):
        PostgresServer()


# --------------------------------------------------------------------------- Redis


def _redis_client(server: RedisServer) -> redis.Redis:
    """A client that fails at once instead of retrying, so 'server down' shows immediately."""
    return redis.Redis(host=server.host, port=server.port, retry=Retry(NoBackoff(), 0), socket_timeout=2)


def test_redis_serves_stops_and_restarts_on_the_same_port() -> None:
    with RedisServer() as server:
        assert server.url == f"redis://127.0.0.1:{server.port}/0"
        client = redis.Redis.from_url(server.url)
        assert client.ping()
        client.set("lead", "42")
        assert client.get("lead") == b"42"

        server.stop()
        assert not server.running
        assert _refuses_connections(server.port)
        with pytest.raises(redis.ConnectionError):
            _redis_client(server).ping()

        port = server.port
        server.restart()
        assert server.running and server.port == port
        assert _redis_client(server).ping()
        assert _redis_client(server).get("lead") is None  # no persistence: a restart starts empty

        pid = server.pid
        assert pid is not None
        server.kill()
        assert _pid_gone(pid) and _refuses_connections(port)
        server.start()
        assert _redis_client(server).ping()
        temp_dir = server.dir
        assert temp_dir is not None and temp_dir.is_dir()
        pid = server.pid
        assert pid is not None

    assert not temp_dir.exists(), "close() removes the temp dir"
    assert _pid_gone(pid)


@pytest.mark.parametrize("ending", ["exit", "sigkill"])
def test_no_redis_survives_a_test_process_that_forgot_or_crashed(ending: str) -> None:
    """atexit covers a normal exit without close(); the parent-death signal covers SIGKILL."""
    script = textwrap.dedent(
        f"""
        import os, signal, sys, time
        from tests.support.services import RedisServer
        server = RedisServer().start()
        print(server.pid, server.dir, flush=True)
        if {ending!r} == "sigkill":
            os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=30)
    expected = -signal.SIGKILL if ending == "sigkill" else 0
    assert result.returncode == expected, result.stderr
    pid_text, dir_text = result.stdout.split()
    assert _pid_gone(int(pid_text)), f"redis-server {pid_text} outlived its test process"
    if ending == "exit":
        assert not Path(dir_text).exists(), "atexit removes the temp dir"
    else:
        shutil.rmtree(dir_text)  # nothing in the killed process could do it


# --------------------------------------------------------------------------- PostgreSQL


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    with PostgresServer() as server:
        yield server


def _count_rows(url: str) -> int:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.text("SELECT count(*) FROM leads")).scalar_one())
    finally:
        engine.dispose()


def test_postgres_serves_a_fresh_database_over_sqlalchemy(postgres: PostgresServer) -> None:
    url = postgres.create_database("leads_basic")
    assert url == f"postgresql+psycopg://postgres@127.0.0.1:{postgres.port}/leads_basic"
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            assert conn.execute(sa.text("SELECT 1")).scalar_one() == 1
            conn.execute(sa.text("CREATE TABLE leads (id serial PRIMARY KEY, email text NOT NULL)"))
            conn.execute(sa.text("INSERT INTO leads (email) VALUES ('a@example.com'), ('b@example.com')"))
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM leads")).scalar_one() == 2
            assert conn.execute(sa.text("SHOW fsync")).scalar_one() == "off"
    finally:
        engine.dispose()

    assert postgres.create_database("leads_basic") == url, "re-creating gives an empty database"
    with sa.create_engine(url).connect() as conn:
        assert conn.execute(sa.text("SELECT to_regclass('leads')")).scalar_one() is None
    postgres.drop_database("leads_basic")
    postgres.drop_database("leads_basic")  # idempotent


def test_postgres_keeps_data_across_stop_restart_and_kill(postgres: PostgresServer) -> None:
    url = postgres.create_database("leads_restart")
    engine = sa.create_engine(url, pool_pre_ping=True)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE leads (email text)"))
            conn.execute(sa.text("INSERT INTO leads VALUES ('a@example.com')"))

        port = postgres.port
        postgres.stop()  # a pooled connection is open: "fast" shutdown must not wait for it
        assert not postgres.running
        assert _refuses_connections(port)
        with pytest.raises(sa.exc.OperationalError), engine.connect():
            pass

        postgres.start()
        assert postgres.port == port
        with engine.begin() as conn:
            conn.execute(sa.text("INSERT INTO leads VALUES ('b@example.com')"))
        assert _count_rows(url) == 2

        postgres.restart()
        assert _count_rows(url) == 2

        postgres.kill()  # a crash: the next start runs crash recovery
        assert _refuses_connections(port)
        postgres.start()
        assert _count_rows(url) == 2
        with engine.begin() as conn:  # pre-ping replaces the connection the crash broke
            conn.execute(sa.text("INSERT INTO leads VALUES ('c@example.com')"))
        assert _count_rows(url) == 3
    finally:
        engine.dispose()
    postgres.drop_database("leads_restart")


# --------------------------------------------------------------------------- SMTP


@pytest.fixture()
def smtp() -> Iterator[SmtpSink]:
    with SmtpSink() as sink:
        yield sink


def _message(subject: str = "Your info packet", to: str = "lead@example.com") -> EmailMessage:
    message = EmailMessage()
    message["From"] = "Leadsync <noreply@example.com>"
    message["To"] = to
    message["Subject"] = subject
    message.set_content("Hello Ada,\nyour packet is attached.")
    message.add_alternative("<p>Hello <b>Ada</b>, your packet is attached.</p>", subtype="html")
    message.add_attachment(b"%PDF-1.4 fake", maintype="application", subtype="pdf", filename="packet.pdf")
    return message


def _send(sink: SmtpSink, message: EmailMessage) -> None:
    with smtplib.SMTP(sink.host, sink.port, timeout=5) as client:
        client.send_message(message)


def test_smtp_sink_receives_and_parses_html_text_and_attachment(smtp: SmtpSink) -> None:
    _send(smtp, _message())

    [received] = smtp.wait_for(1)
    assert isinstance(received, EmailMessage)
    assert received["Subject"] == "Your info packet"
    assert received["To"] == "lead@example.com"
    plain = received.get_body(("plain",))
    html = received.get_body(("html",))
    assert plain is not None and "Hello Ada" in plain.get_content()
    assert html is not None and "<b>Ada</b>" in html.get_content()
    [attachment] = received.iter_attachments()
    assert attachment.get_filename() == "packet.pdf"
    assert attachment.get_content() == b"%PDF-1.4 fake"
    assert smtp.received[0].mail_from == "noreply@example.com"
    assert smtp.received[0].rcpt_tos == ("lead@example.com",)

    smtp.clear()
    assert smtp.messages == []
    with pytest.raises(AssertionError, match="expected 1 message"):
        smtp.wait_for(1, timeout=0.2)


def test_smtp_sink_fails_the_next_messages_with_the_given_code(smtp: SmtpSink) -> None:
    smtp.fail_next(1, 451)
    with pytest.raises(smtplib.SMTPDataError) as temporary:
        _send(smtp, _message("first try"))
    assert isinstance(temporary.value, smtplib.SMTPResponseException)
    assert temporary.value.smtp_code == 451
    assert smtp.messages == []

    _send(smtp, _message("second try"))
    assert [m["Subject"] for m in smtp.wait_for(1)] == ["second try"]

    smtp.fail_next(1, 550, "5.1.1 No such user", at="RCPT")
    with pytest.raises(smtplib.SMTPRecipientsRefused) as permanent:
        _send(smtp, _message("refused"))
    assert permanent.value.recipients["lead@example.com"][0] == 550
    _send(smtp, _message("accepted"))
    assert [m["Subject"] for m in smtp.wait_for(2)] == ["second try", "accepted"]
    assert smtp.rejections == 2

    with pytest.raises(ValueError):
        smtp.fail_next(1, 250)


def test_smtp_sink_refuses_when_stopped_and_works_after_restart(smtp: SmtpSink) -> None:
    port = smtp.port
    smtp.stop()
    assert not smtp.running
    with pytest.raises(ConnectionRefusedError):
        smtplib.SMTP(smtp.host, port, timeout=5)

    smtp.restart()
    assert smtp.running and smtp.port == port
    _send(smtp, _message("after restart"))
    assert [m["Subject"] for m in smtp.wait_for(1)] == ["after restart"]


def test_smtp_sink_can_require_login() -> None:
    with SmtpSink(auth=("mailer", "s3cret")) as sink:
        with (
            smtplib.SMTP(sink.host, sink.port, timeout=5) as client,
            pytest.raises(smtplib.SMTPSenderRefused) as refused,
        ):
            client.send_message(_message("without login"))
        assert refused.value.smtp_code == 530
        with smtplib.SMTP(sink.host, sink.port, timeout=5) as client, pytest.raises(smtplib.SMTPAuthenticationError):
            client.login("mailer", "wrong")
        with smtplib.SMTP(sink.host, sink.port, timeout=5) as client:
            client.login("mailer", "s3cret")
            client.send_message(_message("with login"))
        assert [m["Subject"] for m in sink.wait_for(1)] == ["with login"]

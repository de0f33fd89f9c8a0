"""Dead letters: what fails for good is recorded once, visible, and retried at most once per letter."""

from __future__ import annotations

from click.testing import CliRunner
from sqlalchemy import select

from leadsync.cli import main
from leadsync.config import Settings
from leadsync.storage.db import get_sessionmaker, session_scope
from leadsync.storage.models import DeadLetter, EmailSend
from leadsync.worker.dead_letters import retry
from leadsync.worker.mail.sending import deliver
from leadsync.worker.mail.transport import SmtpTransport
from leadsync.worker.tasks import send_email
from tests.conftest import apply_settings
from tests.support.services import SmtpSink
from tests.worker.helpers import process, submit


def letters() -> list[tuple[str, str, str]]:
    with session_scope() as session:
        return [(d.kind, d.ref, d.status) for d in session.scalars(select(DeadLetter).order_by(DeadLetter.id))]


def packet(settings: Settings, address: str = "ann@example.org") -> str:
    [send_id] = process(submit("info-packet", email=address, first_name="Ann"), settings).email_send_ids
    return send_id


def test_a_permanent_smtp_failure_becomes_a_dead_letter_and_retry_sends_once(
    settings: Settings, monkeypatch, base_env, smtp: SmtpSink
) -> None:
    settings = apply_settings(monkeypatch, {**base_env, "SMTP_HOST": smtp.host, "SMTP_PORT": str(smtp.port)})
    send_id = packet(settings)
    smtp.fail_next(1, code=554, text="5.7.1 Rejected")
    assert deliver(get_sessionmaker(), send_id, SmtpTransport(settings), settings).status == "failed"
    assert letters() == [("email", send_id, "open")]

    runner = CliRunner()
    listed = runner.invoke(main, ["failed", "list"])
    assert listed.exit_code == 0 and send_id in listed.output and "SMTP 554" in listed.output

    first = retry(get_sessionmaker(), [1])
    second = retry(get_sessionmaker(), [1])  # a second operator, or the same command run twice
    assert first.emails == [send_id] and second.emails == [] and second.skipped == [1]
    assert deliver(get_sessionmaker(), send_id, SmtpTransport(settings), settings).status == "sent"
    assert deliver(get_sessionmaker(), send_id, SmtpTransport(settings), settings).status == "skipped"
    assert len(smtp.wait_for(1)) == 1
    assert letters() == [("email", send_id, "retried")]


def test_temporary_failures_past_the_retry_budget_become_a_dead_letter(
    settings: Settings, monkeypatch, base_env, smtp: SmtpSink
) -> None:
    env = {**base_env, "SMTP_HOST": smtp.host, "SMTP_PORT": str(smtp.port), "EMAIL_GIVE_UP_AFTER_SECONDS": "0.001"}
    settings = apply_settings(monkeypatch, env)
    send_id = packet(settings)
    smtp.stop()
    assert deliver(get_sessionmaker(), send_id, SmtpTransport(settings), settings).status == "failed"
    assert letters() == [("email", send_id, "open")]


def test_discard_closes_without_sending(settings: Settings, monkeypatch, base_env, smtp: SmtpSink) -> None:
    settings = apply_settings(monkeypatch, {**base_env, "SMTP_HOST": smtp.host, "SMTP_PORT": str(smtp.port)})
    send_id = packet(settings)
    smtp.fail_next(1, code=550)
    deliver(get_sessionmaker(), send_id, SmtpTransport(settings), settings)
    result = CliRunner().invoke(main, ["failed", "discard", "1"])
    assert result.exit_code == 0 and "discarded 1" in result.output
    assert retry(get_sessionmaker(), [1]).emails == []
    assert letters() == [("email", send_id, "discarded")]


def test_an_unexpected_error_is_retried_then_dead_lettered_not_looped(
    settings: Settings, monkeypatch, base_env, tmp_path
) -> None:
    # A real failure: the configured packet PDF does not exist.
    settings = apply_settings(monkeypatch, {**base_env, "INFO_PACKET_PATH": str(tmp_path / "missing.pdf")})
    send_id = packet(settings)
    # Run in-process: Celery runs the retries right away, 1 + 3 attempts in all.
    result = send_email.apply(args=[send_id])
    assert result.state == "FAILURE"
    assert letters() == [("email", send_id, "open")]
    with session_scope() as session:
        letter = session.scalars(select(DeadLetter)).one()
        assert letter.attempts == 4 and "FileNotFoundError" in letter.error
    with session_scope() as session:
        assert session.get_one(EmailSend, send_id).status == "failed"  # the sweeper leaves it alone now


def test_with_ops_token_set_state_changing_commands_need_it(
    settings: Settings, monkeypatch, base_env, smtp: SmtpSink
) -> None:
    env = {**base_env, "SMTP_HOST": smtp.host, "SMTP_PORT": str(smtp.port), "OPS_TOKEN": "s3cret-ops"}
    settings = apply_settings(monkeypatch, env)
    send_id = packet(settings)
    smtp.fail_next(1, code=550)
    deliver(get_sessionmaker(), send_id, SmtpTransport(settings), settings)
    runner = CliRunner()
    for command in (["failed", "retry", "1"], ["failed", "discard", "1"], ["forget", "ann@example.org", "--yes"]):
        refused = runner.invoke(main, [*command, "--ops-token", "wrong"])
        assert refused.exit_code == 2 and "OPS_TOKEN" in refused.output, command
        assert runner.invoke(main, command).exit_code == 2  # none presented
    assert letters() == [("email", send_id, "open")]  # nothing changed
    assert runner.invoke(main, ["failed", "list"]).exit_code == 0  # reading needs no token
    done = runner.invoke(main, ["failed", "discard", "1"], env={"LEADSYNC_OPS_TOKEN": "s3cret-ops"})
    assert done.exit_code == 0 and "discarded 1" in done.output

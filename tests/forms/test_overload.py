"""Overload sheds load: past INTAKE_QUEUE_MAX posts waiting for a group commit, a post is answered 503 with
Retry-After at once, and nothing of it is stored; the posts already queued are committed and answered 202.

The database is made slow for real: a second connection holds an ACCESS EXCLUSIVE lock on `submissions`,
so the group-commit writer's transaction waits inside PostgreSQL, exactly as under a slow disk or a long
migration.

Example:
    .venv/bin/pytest tests/forms/test_overload.py -q -p no:cacheprovider
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest
from sqlalchemy import Engine, create_engine, func, select, text
from starlette.requests import Request
from starlette.types import Receive, Scope, Send

from leadsync.config import Settings
from leadsync.forms.app import OVERLOADED_MESSAGE, create_app
from leadsync.forms.group_commit import ADMISSION_DEADLINE_SECONDS, ARRIVED, GroupCommit, Overloaded
from leadsync.forms.shedding import MIN_IN_FLIGHT, ShedLoad
from leadsync.forms.submit import store_batch
from leadsync.storage.models import Submission
from leadsync.storage.submissions import NewSubmission
from leadsync.worker.enqueue import enqueue_submissions
from tests.conftest import apply_settings


async def wait_until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Poll `condition` on the running loop (the app's requests go on meanwhile)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.01)


def waiting_on_locks(engine: Engine) -> int:
    """Backends of this database waiting for a lock (PostgreSQL's own view of who is blocked)."""
    with engine.connect() as connection:
        return connection.scalar(
            text(
                "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
                "WHERE NOT l.granted AND d.datname = current_database()"
            )
        )


@pytest.mark.parametrize("backend", ["redis-postgres"])  # the table lock is PostgreSQL's
def test_a_full_queue_answers_503_with_retry_after_and_stores_nothing(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, backend: str
) -> None:
    # One submission a commit and three waiting at most: the first post holds the writer, three fill the queue.
    settings = apply_settings(monkeypatch, {"INTAKE_BATCH_MAX": "1", "INTAKE_QUEUE_MAX": "3"})
    app = create_app(settings)
    commits = app.state.group_commit
    engine = create_engine(settings.database_url)

    async def scenario() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://leadsync.test") as client:
            with engine.connect() as lock:
                lock.execute(text("LOCK TABLE submissions IN ACCESS EXCLUSIVE MODE"))
                post = lambda n: client.post("/forms/newsletter", json={"email": f"q{n}@example.org"})  # noqa: E731
                queued = [asyncio.create_task(post(0))]
                # The first post's transaction waits on the lock inside PostgreSQL: the writer is busy.
                await wait_until(lambda: waiting_on_locks(engine) == 1, "the writer never reached the database")
                queued += [asyncio.create_task(post(n)) for n in range(1, 4)]
                await wait_until(lambda: commits.saturated, "the queue never filled")

                started = time.monotonic()
                # Bounded waits: a post that queued instead of being shed would wait for the lock forever.
                shed_json = await asyncio.wait_for(
                    client.post("/forms/newsletter", json={"email": "shed1@example.org"}), timeout=5
                )
                shed_html = await asyncio.wait_for(
                    client.post(
                        "/forms/info-packet",
                        data={"email": "shed2@example.org", "first_name": "Shed"},
                        headers={"Accept": "text/html"},
                    ),
                    timeout=5,
                )
                quick = time.monotonic() - started
                # A post already past the middleware when the queue filled is turned away by the queue itself.
                with pytest.raises(Overloaded):
                    late = NewSubmission(form="newsletter", email="shed3@example.org", fields={}, raw={})
                    await asyncio.wait_for(commits.store(late), timeout=5)
                assert not any(task.done() for task in queued)  # the queued ones still wait for the lock
                lock.rollback()  # the database is back
            answers = await asyncio.gather(*queued)
            after = await client.post("/forms/newsletter", json={"email": "after@example.org"})

        assert quick < 1.0, f"the two 503s took {quick:.2f}s: shedding must not wait for the database"
        assert shed_json.status_code == 503 and shed_json.headers["retry-after"] == "2"
        assert shed_json.json() == {"errors": {"service": OVERLOADED_MESSAGE}}
        assert shed_html.status_code == 503 and shed_html.headers["retry-after"] == "2"
        assert "text/html" in shed_html.headers["content-type"] and OVERLOADED_MESSAGE in shed_html.text
        assert [answer.status_code for answer in answers] == [202] * 4
        assert after.status_code == 202  # once drained, the queue takes posts again
        assert commits.shed == 3

    asyncio.run(scenario())
    with engine.connect() as connection:
        stored = set(connection.scalars(select(Submission.email)))
        total = connection.scalar(select(func.count()).select_from(Submission))
    engine.dispose()
    assert stored == {"q0@example.org", "q1@example.org", "q2@example.org", "q3@example.org", "after@example.org"}
    assert total == 5  # nothing of the three shed posts, not even a spam count row


@pytest.mark.parametrize("backend", ["redis-postgres"])
def test_posts_past_the_in_flight_limit_are_answered_503_at_once(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, backend: str
) -> None:
    # Two posts in progress at most; the queue limit far away, so only the in-flight limit can shed.
    settings = apply_settings(monkeypatch, {"INTAKE_MAX_IN_FLIGHT": "2", "INTAKE_QUEUE_MAX": "1000"})
    app = create_app(settings)
    engine = create_engine(settings.database_url)

    async def scenario() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://leadsync.test") as client:
            with engine.connect() as lock:
                lock.execute(text("LOCK TABLE submissions IN ACCESS EXCLUSIVE MODE"))
                held = [
                    asyncio.create_task(client.post("/forms/newsletter", json={"email": f"h{n}@example.org"}))
                    for n in range(2)
                ]
                # Both posts are in progress (in the writer's batch or queued behind it) while it waits on the lock.
                await wait_until(lambda: waiting_on_locks(engine) == 1, "the writer never reached the database")
                started = time.monotonic()
                shed = await asyncio.wait_for(
                    client.post("/forms/newsletter", json={"email": "over@example.org"}), timeout=5
                )
                quick = time.monotonic() - started
                token = await asyncio.wait_for(client.get("/forms/token?form=newsletter"), timeout=5)
                lock.rollback()
            answers = await asyncio.gather(*held)
            after = await client.post("/forms/newsletter", json={"email": "after@example.org"})

        assert quick < 1.0 and shed.status_code == 503 and shed.headers["retry-after"] == "2"
        assert shed.json() == {"errors": {"service": OVERLOADED_MESSAGE}}
        assert token.status_code == 200  # only form posts are limited; the page's token still loads
        assert [answer.status_code for answer in answers] == [202, 202] and after.status_code == 202

    asyncio.run(scenario())
    with engine.connect() as connection:
        stored = set(connection.scalars(select(Submission.email)))
    engine.dispose()
    assert stored == {"h0@example.org", "h1@example.org", "after@example.org"}


def test_a_post_that_reaches_the_commit_past_its_deadline_is_shed_and_not_stored(settings: Settings) -> None:
    # What ShedLoad records for a post that waited for the CPU longer than the deadline before its commit.
    commits = GroupCommit(store_batch, enqueue_submissions)
    late = NewSubmission(form="newsletter", email="late@example.org", fields={}, raw={})
    on_time = NewSubmission(form="newsletter", email="on-time@example.org", fields={}, raw={})

    async def post(new: NewSubmission, waited: float) -> object:
        ARRIVED.set(time.monotonic() - waited)
        return await commits.store(new)

    async def scenario() -> None:
        with pytest.raises(Overloaded):
            await post(late, ADMISSION_DEADLINE_SECONDS + 0.1)
        assert (await post(on_time, 0.0)).created

    asyncio.run(scenario())
    engine = create_engine(settings.database_url)
    with engine.connect() as connection:
        assert set(connection.scalars(select(Submission.email))) == {"on-time@example.org"}
    engine.dispose()


async def body_after(seconds: float, body: bytes) -> AsyncIterator[bytes]:
    """A request body sent `seconds` after its headers, as from a visitor on a slow line."""
    await asyncio.sleep(seconds)
    yield body


def test_a_post_below_the_floor_is_stored_however_long_its_body_took(settings: Settings) -> None:
    # Below MIN_IN_FLIGHT a post is always taken: no admission deadline, which its upload (or a cold process,
    # the 503 of tests/integration/test_topology.py in a CI-like run) would otherwise use up.
    app = create_app(settings)
    slow = ADMISSION_DEADLINE_SECONDS + 0.2

    async def scenario() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://leadsync.test") as client:
            body = body_after(slow, b'{"email": "slow-line@example.org"}')
            return await client.post("/forms/newsletter", content=body, headers={"Content-Type": "application/json"})

    started = time.monotonic()
    answer = asyncio.run(scenario())
    assert time.monotonic() - started >= slow  # the body really came late
    assert answer.status_code == 202, answer.text
    engine = create_engine(settings.database_url)
    with engine.connect() as connection:
        assert list(connection.scalars(select(Submission.email))) == ["slow-line@example.org"]
    engine.dispose()
    assert app.state.group_commit.shed == 0


def test_a_post_admitted_past_the_floor_that_reaches_its_commit_late_is_shed(settings: Settings) -> None:
    # Past the floor the door marks when a post came in, and the group commit turns it away when the post
    # reaches it after the deadline: 503, nothing stored. A floor of 1: the first post in flight is under it.
    commits = GroupCommit(store_batch, enqueue_submissions)

    async def endpoint(scope: Scope, receive: Receive, send: Send) -> None:
        body = await Request(scope, receive).body()  # the body first, as forms/submit.py reads it before its commit
        new = NewSubmission(form="newsletter", email=body.decode(), fields={}, raw={})
        try:
            status = 202 if (await commits.store(new)).created else 500
        except Overloaded:
            status = 503
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    door = ShedLoad(endpoint, commits, max_in_flight=10, min_in_flight=1)
    release = asyncio.Event()

    async def held_body() -> AsyncIterator[bytes]:
        await release.wait()
        yield b"first@example.org"

    async def scenario() -> list[int]:
        transport = httpx.ASGITransport(app=door)
        async with httpx.AsyncClient(transport=transport, base_url="http://leadsync.test") as client:
            first = asyncio.create_task(client.post("/forms/newsletter", content=held_body()))
            await wait_until(lambda: door.in_flight == 1, "the first post was not admitted")
            late = client.post("/forms/newsletter", content=body_after(ADMISSION_DEADLINE_SECONDS + 0.2, b"late@x.org"))
            late_answer = await late
            release.set()
            return [late_answer.status_code, (await first).status_code]

    assert asyncio.run(scenario()) == [503, 202]
    engine = create_engine(settings.database_url)
    with engine.connect() as connection:
        assert list(connection.scalars(select(Submission.email))) == ["first@example.org"]
    engine.dispose()


def answers_202_when(release: asyncio.Event) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """An ASGI endpoint that answers 202 once `release` is set: posts stay in flight as long as a test wants."""

    async def endpoint(scope: Scope, receive: Receive, send: Send) -> None:
        await release.wait()
        await send({"type": "http.response.start", "status": 202, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    return endpoint


def test_admission_follows_the_wait_the_measured_answer_rate_predicts() -> None:
    # The door alone (forms/shedding.py) in front of an endpoint that answers 202 when the test lets it; the
    # clock is the test's, so the measured rate is exact: 32 posts answered in the first 0.5 s = 64 posts/s.
    now = [0.0]
    release = asyncio.Event()
    endpoint = answers_202_when(release)

    door = ShedLoad(
        endpoint,
        GroupCommit(store_batch, enqueue_submissions),
        max_in_flight=100,
        min_in_flight=2,
        clock=lambda: now[0],
    )

    async def scenario() -> None:
        transport = httpx.ASGITransport(app=door)
        async with httpx.AsyncClient(transport=transport, base_url="http://leadsync.test") as client:
            post = lambda: client.post("/forms/newsletter", json={"email": "a@example.org"})  # noqa: E731
            # No rate known yet: a burst is admitted past the estimate's limit (up to max_in_flight).
            burst = [asyncio.create_task(post()) for _ in range(12)]
            await wait_until(lambda: door.in_flight == 12, "the burst was not admitted")
            release.set()
            assert [answer.status_code for answer in await asyncio.gather(*burst)] == [202] * 12
            release.clear()
            assert door.rate is None  # 12 answers at t=0: no window has closed
            release.set()
            for step in range(1, 21):  # 20 more answers over the next 0.5 s: the window closes at 64 posts/s
                now[0] = step * 0.025
                assert (await post()).status_code == 202
            assert door.rate == pytest.approx(32 / 0.5)
            release.clear()
            # 64 posts/s and a 0.2 s target: with 12 in flight a new post waits 0.19 s (admitted), with 13
            # 0.203 s (shed).
            held = [asyncio.create_task(post()) for _ in range(13)]
            await wait_until(lambda: door.in_flight == 13, "13 posts were not admitted")
            shed = await asyncio.wait_for(post(), timeout=5)
            assert door.in_flight == 13
            release.set()
            assert [answer.status_code for answer in await asyncio.gather(*held)] == [202] * 13
            # A slower window (13 + 1 answers in the next 0.5 s: 28 posts/s) moves the rate by 30% of the
            # difference only: one slow window (a checkpoint, a collector pass) must not shed a burst.
            now[0] = 1.0
            assert (await post()).status_code == 202
            assert door.rate == pytest.approx(0.3 * 28 + 0.7 * 64)

        assert shed.status_code == 503 and shed.headers["retry-after"] == "2"
        assert shed.json() == {"errors": {"service": OVERLOADED_MESSAGE}}

    asyncio.run(scenario())


def test_a_burst_below_the_floor_is_admitted_however_slow_the_process_just_was() -> None:
    # A web starting beside busy workers answered ~14 posts/s; 50 posts at once were then shed on that rate
    # (in_flight / rate >> the 0.2 s target). Below MIN_IN_FLIGHT the estimate is not asked: with a measured
    # 10 posts/s, 64 posts in flight are admitted, the 65th is shed.
    now = [0.0]
    release = asyncio.Event()
    endpoint = answers_202_when(release)

    door = ShedLoad(endpoint, GroupCommit(store_batch, enqueue_submissions), max_in_flight=128, clock=lambda: now[0])

    async def scenario() -> None:
        transport = httpx.ASGITransport(app=door)
        async with httpx.AsyncClient(transport=transport, base_url="http://leadsync.test") as client:
            post = lambda: client.post("/forms/newsletter", json={"email": "a@example.org"})  # noqa: E731
            release.set()
            for step in range(1, 6):  # 5 answers in 0.5 s: 10 posts/s
                now[0] = step * 0.1
                assert (await post()).status_code == 202
            assert door.rate == pytest.approx(10.0)
            release.clear()
            burst = [asyncio.create_task(post()) for _ in range(MIN_IN_FLIGHT)]
            await wait_until(lambda: door.in_flight == MIN_IN_FLIGHT, "the burst was not admitted")
            shed = await asyncio.wait_for(post(), timeout=5)
            release.set()
            answers = await asyncio.gather(*burst)
        assert [answer.status_code for answer in answers] == [202] * MIN_IN_FLIGHT
        assert shed.status_code == 503

    assert MIN_IN_FLIGHT >= 50  # tests/integration/test_topology.py posts 50 at once to a just-started web
    asyncio.run(scenario())


@pytest.mark.parametrize("backend", ["redis-postgres"])  # the table lock is PostgreSQL's
def test_an_address_that_sent_spam_gets_two_posts_in_flight_and_others_are_not_held_back(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, backend: str
) -> None:
    settings = apply_settings(monkeypatch, {"INTAKE_MAX_IN_FLIGHT": "100"})
    app = create_app(settings)
    engine = create_engine(settings.database_url)

    async def scenario() -> None:
        def client_at(address: str) -> httpx.AsyncClient:
            transport = httpx.ASGITransport(app=app, client=(address, 4000))
            return httpx.AsyncClient(transport=transport, base_url="http://leadsync.test")

        async with client_at("203.0.113.66") as bot, client_at("192.0.2.10") as office:
            post = lambda client, email, **extra: asyncio.create_task(  # noqa: E731
                client.post("/forms/newsletter", json={"email": email, **extra})
            )
            with engine.connect() as lock:
                lock.execute(text("LOCK TABLE submissions IN ACCESS EXCLUSIVE MODE"))
                # The bot's honeypot post is counted as spam by the writer, which then waits on the lock.
                held = [post(bot, "hp@example.org", website="http://spam.example")]
                await wait_until(lambda: waiting_on_locks(engine) == 1, "the writer never reached the database")
                assert app.state.spam_guard.suspect("203.0.113.66")
                held.append(post(bot, "second@example.org"))  # its second post in flight: admitted
                # Four honest posts at once from one address (an office): none is held back.
                held += [post(office, f"office{n}@example.org") for n in range(4)]
                await wait_until(lambda: app.state.group_commit._pending.qsize() == 5, "5 posts never queued")
                shed = await asyncio.wait_for(bot.post("/forms/newsletter", json={"email": "third@example.org"}), 5)
                lock.rollback()
            answers = await asyncio.gather(*held)

        assert shed.status_code == 503 and shed.headers["retry-after"] == "2"
        assert [answer.status_code for answer in answers] == [202] * 6

    asyncio.run(scenario())
    with engine.connect() as connection:
        stored = set(connection.scalars(select(Submission.email)))
    engine.dispose()
    assert stored == {"hp@example.org", "second@example.org"} | {f"office{n}@example.org" for n in range(4)}

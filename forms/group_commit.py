"""Group commit: the submissions that arrive together are stored in one transaction.

A commit per request costs about 2 ms of Python CPU (SQLAlchemy, the driver), so one web process
tops out near 400 commits a second however fast the disk is. Here each request puts its submission
in a queue and waits; one writer takes everything queued, stores it with `store_submissions` in a
single transaction in a thread, and answers every waiting request at once. Under load the batches
grow by themselves (whatever arrived while the previous transaction committed), and a busy batch waits
LINGER_SECONDS for the posts on their way; a lone request is committed at once, without waiting for company.

The queue is bounded (INTAKE_QUEUE_MAX): past saturation a post is answered 503 with Retry-After at once
(`Overloaded`, checked before the body is even read by forms/shedding.py's `ShedLoad`, and again here) instead
of waiting behind an ever longer queue. With 200 a commit at ~5-10 ms a batch, 1,000 queued is under a
second of work: a request either gets its commit within about a second or a quick "try again".

The answer comes only after the commit: nothing is answered 202 that is not stored. Right after the
commit, in the same thread, the batch's new submissions go to the broker as one message (publishing
costs about 1 ms of CPU a message); a failed publish only logs, and the sweeper publishes later.

Example:
    >>> commits = GroupCommit(store=store_batch, publish=enqueue_submissions)
    >>> outcome = await commits.store(new_submission)     # in a request handler
    >>> outcome.created, outcome.submission_id
    (True, '3f2a...')

Parameters:
    store: stores a batch in one transaction and returns one outcome each, in order (runs in a thread).
    publish: hands a list of submission ids to the broker; must not raise (runs in the same thread).
    max_batch: the most submissions in one transaction, and in one published message.
    max_queue: the most submissions waiting for a transaction (the one being committed not counted);
        one more raises `Overloaded`, which the app answers 503 with Retry-After.
    count: sets each post's final spam reason for the whole batch (the rate limits: forms/spam.py
        `SpamGuard.count`), in the writer's thread before the transaction; None: stored as given.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Callable, Sequence
from typing import Any

import structlog
from starlette.concurrency import run_in_threadpool

from leadsync.storage.submissions import NewSubmission, StoreOutcome

log = structlog.get_logger(__name__)
Waiter = tuple[NewSubmission, "asyncio.Future[StoreOutcome]"]
RETRY_AFTER_SECONDS = 2  # a queue of INTAKE_QUEUE_MAX drains in about a second; the snippet retries once
# A post admitted past ShedLoad's floor (forms/shedding.py sets ARRIVED for those only) that reaches the queue
# later than this after it arrived is answered 503 instead of stored: past saturation an admitted post waits
# for the CPU, and without a deadline the tail of the 202s grew past 2 s at -c 256 on a busy machine
# (docs/benchmarks.md "Under pressure"). The aim: a 202 within 0.5 s + one commit; the rest of the wait is in
# front of the app (uvicorn, the loop).
ADMISSION_DEADLINE_SECONDS = 0.5
# A batch costs ~2.5 ms of the writer's CPU whatever its size (the rate-limit script, the publish, the commit's
# round trips) plus ~50 us a post: ~240 us a post in batches of 16, ~150 in batches of 32 (`./bench/run
# group_commit`; docs/benchmarks.md "Fourth round"). Under `wrk -c64` two processes' batches
# alternated between two halves of ~16 (one half queued while the other committed); waiting 2 ms once a batch
# is busy lets the other half join: web CPU a post 0.67-0.73 -> 0.55-0.61 ms, p99 52-64 -> 40-47 ms. 1 ms
# merged too little, 3-4 ms left the CPU idle. A lone post, or a few, is never held.
LINGER_SECONDS = 0.002
LINGER_FROM = 4  # posts already queued: the process is busy and more are on their way
ARRIVED: contextvars.ContextVar[float | None] = contextvars.ContextVar("leadsync_post_arrived", default=None)


class Overloaded(Exception):
    """Too many posts wait (a full queue) or this one waited too long: answer 503 with Retry-After, store nothing."""


class GroupCommit:
    def __init__(
        self,
        store: Callable[[Sequence[NewSubmission]], list[StoreOutcome]],
        publish: Callable[[list[str]], Any],
        max_batch: int = 200,
        max_queue: int = 1000,
        count: Callable[[Sequence[NewSubmission]], list[NewSubmission]] | None = None,
    ) -> None:
        self._store = store
        self._count = count
        self._publish = publish
        self.max_batch = max_batch
        self.max_queue = max_queue
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: asyncio.Queue[Waiter]
        self._writer: asyncio.Task[None] | None = None
        self.batches = 0  # transactions committed, for tests and metrics
        self.shed = 0  # posts answered 503 by the app's ShedLoad or here, for tests and metrics

    @property
    def saturated(self) -> bool:
        """The queue holds max_queue submissions: a new post would only wait, so it is turned away."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False
        return self._loop is loop and self._pending.qsize() >= self.max_queue

    async def store(self, new: NewSubmission) -> StoreOutcome:
        """Store `new` with whatever else is queued; returns once it is committed (or raises why not)."""
        self._ensure_started()
        if self._pending.qsize() >= self.max_queue:
            self.shed += 1
            raise Overloaded(f"{self.max_queue} submissions already wait for a commit")
        arrived = ARRIVED.get()
        if arrived is not None and time.monotonic() - arrived > ADMISSION_DEADLINE_SECONDS:
            self.shed += 1
            raise Overloaded(f"the post waited {time.monotonic() - arrived:.2f}s before reaching the commit")
        future: asyncio.Future[StoreOutcome] = asyncio.get_running_loop().create_future()
        self._pending.put_nowait((new, future))
        return await future

    def _ensure_started(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is loop:
            return
        # First use, or a new event loop (tests start one per client): a new queue, a new writer.
        self._loop = loop
        self._pending = asyncio.Queue()
        # A fresh context: the writer outlives the request that started it and must not carry its log fields.
        self._writer = loop.create_task(self._write_forever(), context=contextvars.Context())

    async def _write_forever(self) -> None:
        while True:
            batch = await _take(self._pending, self.max_batch)
            waiting = [(new, future) for new, future in batch if not future.done()]  # done: the client left
            if not waiting:
                continue
            try:
                outcomes = await run_in_threadpool(self._commit_and_publish, [new for new, _ in waiting])
            except Exception as error:  # the database is away: every request in the batch is told so
                for _, future in waiting:
                    if not future.done():
                        future.set_exception(error)
                continue
            self.batches += 1
            for (_, future), outcome in zip(waiting, outcomes, strict=True):
                if not future.done():
                    future.set_result(outcome)

    def _commit_and_publish(self, batch: list[NewSubmission]) -> list[StoreOutcome]:
        if self._count is not None:
            batch = self._count(batch)  # the rate limits: one Redis round trip a batch, before the transaction
        try:
            outcomes = self._store(batch)
        except Exception as error:
            log.warning("group commit of %d submission(s) failed, each is answered 503: %r", len(batch), error)
            raise
        stored = [o.submission_id for o in outcomes if o.created and not o.counted_only]
        # Spam is counted (a small sample stored) but never processed; a replayed Idempotency-Key was
        # published before.
        ids = [o.submission_id for new, o in zip(batch, outcomes, strict=True) if o.created and not new.spam_reason]
        spam = sum(1 for new, o in zip(batch, outcomes, strict=True) if o.created and new.spam_reason)
        if stored or spam:
            # One line a commit, not a request (a line costs about a tenth of a post's CPU); the ids let a
            # lead be followed from here into the worker's lines.
            log.info("stored %d submission(s), %d spam counted", len(ids), spam, submission_ids=stored)
        if ids:
            self._publish(ids)
        return outcomes


async def _take(queue: asyncio.Queue[Any], most: int) -> list[Any]:
    """Wait for one item, then take whatever else is already queued, up to `most`; when that is a busy
    batch (LINGER_FROM or more), wait LINGER_SECONDS more and take what arrived meanwhile."""
    items = [await queue.get()]
    _drain(queue, items, most)
    if LINGER_FROM <= len(items) < most:
        await asyncio.sleep(LINGER_SECONDS)
        _drain(queue, items, most)
    return items


def _drain(queue: asyncio.Queue[Any], items: list[Any], most: int) -> None:
    while len(items) < most and not queue.empty():
        items.append(queue.get_nowait())

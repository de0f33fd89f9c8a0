"""Load shedding at the door: a form post is answered 503 + Retry-After before its body is read when taking it
would only make it (and everyone behind it) wait past the point a visitor gives up.

A post is turned away when this process already has INTAKE_MAX_IN_FLIGHT posts in progress, when the
group-commit queue is full, when its client address sent spam within the last minute and already has
SUSPECT_MAX_IN_FLIGHT posts in progress, or when the wait it would see, estimated by Little's law from what
the process just did (posts in flight / posts answered a second over the last half second), passes
TARGET_WAIT_SECONDS.

Why a cap for spamming addresses: a flood comes from few addresses over many connections (`./bench/run
flood`: one address, 64 connections at full speed). Its spam is answered like a success once parsed, but
the parsing is the CPU real visitors need; capped, the flood holds two slots and waits out
SUSPECT_SHED_PAUSE_SECONDS on each other connection, and real visitors still find the door open. Only addresses
the spam rules caught are capped (forms/spam.py `SpamGuard.suspect`): many honest posts from one address
(a proxy not trusted for X-Forwarded-For, the test suites) are not.

Why an estimate and not only a fixed in-flight cap: the rate a process answers at depends on the machine.
Alone on 2 cores one process answers ~1,300 posts/s, so 128 in flight wait ~0.1 s; on the shared machine
with load 5 it answered ~300/s, the same 128 waited ~0.43 s at the median and 1.47 s at p99 (`./bench/run
overload`, docs/benchmarks.md "Under pressure"). The estimate keeps the admitted wait near the target
whatever the speed; below MIN_IN_FLIGHT posts nothing is shed (a burst after a quiet spell, or on a process
just started beside busy workers, is answered a little late rather than turned away).

Example:
    app = ShedLoad(starlette_app, group_commit, max_in_flight=128)    # forms/app.py wraps the routes with it
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from leadsync.forms.group_commit import ARRIVED, RETRY_AFTER_SECONDS, GroupCommit
from leadsync.forms.negotiation import wants_html
from leadsync.forms.pages import render_errors
from leadsync.forms.spam import client_key

SHED_PAUSE_SECONDS = 0.25  # caps a shed connection at 4 answers a second; docs/benchmarks.md "Under pressure"
OVERLOADED_MESSAGE = "We are receiving very many requests right now. Please try again in a few seconds."
# The wait an admitted post may expect before its commit starts: a quarter of the 1 s p99 target, since the
# tail of the waits runs ~3-4x their mean (a commit's fsync, a collector pass, the event loop's own queue).
TARGET_WAIT_SECONDS = 0.2
SUSPECT_MAX_IN_FLIGHT = 2  # posts in progress for an address that sent spam lately: a person posts one at a time
# A spamming address's shed answers wait longer: its connections then cost the loop 1 answer a second each
# instead of 4 (`./bench/run flood`: 64 connections gave ~230 503s a second at 0.25 s, the web at 0.46 of a core).
SUSPECT_SHED_PAUSE_SECONDS = 1.0
# Always admitted, whatever the estimate: a burst of this many waits at most MIN_IN_FLIGHT / rate, which at the
# ~14 posts/s of a web starved by workers starting beside it is ~4.5 s, better for a visitor than a 503 and a
# retry. With 16, 50 posts at once on a just-started stack were shed on that cold rate (the CI run of
# tests/integration/test_topology.py); 64 is also `./bench/run intake`'s connection count, and the overload
# past it is still bounded by max_in_flight and by GroupCommit's admission deadline.
MIN_IN_FLIGHT = 64
RATE_WINDOW_SECONDS = 0.5  # the answer rate is measured over windows this long; older than 2 windows: unknown
# Each window's rate weighs this much against the ones before: at 0.5 s windows a change shows fully in ~2 s.
# Unsmoothed, `./bench/run intake` (-c64, load 4-5) shed 22 of 28,327 posts on single slow windows.
RATE_SMOOTHING = 0.3


def overloaded(request: Request, _: Exception | None = None) -> Response:
    """503 with Retry-After: the group-commit queue is full (forms/group_commit.py); nothing was stored."""
    headers = {"Retry-After": str(RETRY_AFTER_SECONDS)}
    if wants_html(request.headers):
        return render_errors(503, {"service": OVERLOADED_MESSAGE}, None, headers=headers)
    return JSONResponse({"errors": {"service": OVERLOADED_MESSAGE}}, status_code=503, headers=headers)


class ShedLoad:
    """Pure ASGI (no BaseHTTPMiddleware: that one costs a task and a stream a request); only form posts are
    counted and shed. `GroupCommit.store` checks its queue and the post's deadline again, past this door."""

    def __init__(
        self,
        app: ASGIApp,
        group_commit: GroupCommit,
        max_in_flight: int,
        target_wait: float = TARGET_WAIT_SECONDS,
        min_in_flight: int = MIN_IN_FLIGHT,
        suspect: Callable[[str], bool] = lambda client: False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.app = app
        self.group_commit = group_commit
        self.max_in_flight = max_in_flight
        self.target_wait = target_wait
        self.min_in_flight = min_in_flight
        self.suspect = suspect
        self.clock = clock
        self.in_flight = 0
        self.by_client: dict[str, int] = {}  # posts in progress by client address (IPv6 by its /64)
        self.rate: float | None = None  # posts answered a second over the last full window; None: not known
        self._window_start = clock()
        self._window_done = 0

    def admits(self, client: str) -> bool:
        """Whether one more post from `client` (its rate-limit key) may come in now."""
        if self.in_flight >= self.max_in_flight or self.group_commit.saturated:
            return False
        if self.by_client.get(client, 0) >= SUSPECT_MAX_IN_FLIGHT and self.suspect(client):
            return False
        if self.in_flight < self.min_in_flight or self.rate is None:
            return True
        return self.in_flight / self.rate < self.target_wait  # Little's law: the wait a new post would see

    def _answered(self) -> None:
        now = self.clock()
        self._window_done += 1
        elapsed = now - self._window_start
        if elapsed >= RATE_WINDOW_SECONDS:
            # A window that spans a quiet spell says nothing about how fast the process answers when busy.
            measured = self._window_done / elapsed
            if elapsed > 2 * RATE_WINDOW_SECONDS:
                self.rate = None
            elif self.rate is None:
                self.rate = measured
            else:  # smoothed: one window slowed by a checkpoint's fsync or a collector pass must not shed
                self.rate = RATE_SMOOTHING * measured + (1 - RATE_SMOOTHING) * self.rate
            self._window_start, self._window_done = now, 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or not scope["path"].startswith("/forms/"):
            await self.app(scope, receive, send)
            return
        address = scope.get("client")
        client = client_key(address[0] if address else None)
        if not self.admits(client):
            self.group_commit.shed += 1
            # A pause before the 503, not after it: a client that retries at once (a bot, a load generator)
            # otherwise spends the CPU the admitted posts need on 503s (at -c 256 against one process: ~1,950
            # 503s/s at ~0.45 ms each left 95 posts/s admitted and p99 past 2 s). The pause costs no CPU.
            await asyncio.sleep(SUSPECT_SHED_PAUSE_SECONDS if self.suspect(client) else SHED_PAUSE_SECONDS)
            await overloaded(Request(scope))(scope, receive, send)
            return
        # GroupCommit.store sheds a post that took too long to get there, but only one admitted past the floor:
        # below it a post is always taken. Its wait then includes its body's upload, and a cold process beside
        # busy workers took over 0.5 s for 50 posts at once (a 503 in the CI run of tests/integration/
        # test_topology.py), as a visitor on a slow line would for a body sent after its headers.
        ARRIVED.set(time.monotonic() if self.in_flight >= self.min_in_flight else None)
        self.in_flight += 1
        self.by_client[client] = self.by_client.get(client, 0) + 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1
            if (left := self.by_client.pop(client) - 1) > 0:  # no entry for an idle address: bounded by in_flight
                self.by_client[client] = left
            self._answered()

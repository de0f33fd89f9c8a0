"""The shared HubSpot rate limiter: several processes, one window; HubSpot's headers; pauses; Retry-After."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path
from typing import Any

import pytest
from hubspot.crm.contacts.exceptions import ApiException
from limits.storage import MemoryStorage, RedisStorage, Storage

from leadsync.worker.crm.hubspot import HubSpotCrm
from leadsync.worker.crm.hubspot_wire import RetryPolicy
from leadsync.worker.crm.port import CrmRateLimited, CrmTemporaryError
from leadsync.worker.crm.ratelimit import FileStorage, RateLimitBusy, RateLimiter
from tests.support.hubspot_emulator import HubSpotEmulator
from tests.support.services import RedisServer, free_port

LIMIT, WINDOW = 20, 2  # 19 per 2 s window after the reserve, 2 per second


def _hammer(uri: str, seconds: float, out: Any) -> None:
    """A separate process taking slots as fast as it may; reports when it got each one."""
    storage: Storage = RedisStorage(uri, key_prefix="t") if uri.startswith("redis") else FileStorage(uri)
    limiter = RateLimiter(storage, LIMIT, "shared", window_seconds=WINDOW)
    stamps: list[float] = []
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            limiter.acquire(max_wait=deadline - time.time())
        except RateLimitBusy:
            break
        stamps.append(time.time())
    out.put(stamps)


def _run_two_processes(uri: str, seconds: float = 4.2) -> list[float]:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    workers = [context.Process(target=_hammer, args=(uri, seconds, queue)) for _ in range(2)]
    for worker in workers:
        worker.start()
    results = [queue.get(timeout=60) for _ in workers]
    for worker in workers:
        worker.join(timeout=30)
    return sorted(stamp for stamps in results for stamp in stamps)


def _max_in_window(stamps: list[float], window: float) -> int:
    best, start = 0, 0
    for end, stamp in enumerate(stamps):
        while stamps[start] <= stamp - window:
            start += 1
        best = max(best, end - start + 1)
    return best


@pytest.mark.parametrize("store", ["file", "redis"])
def test_two_processes_share_one_window(store: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    if store == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        if not server.running:
            server.start()
        uri = server.url
        RedisStorage(uri, key_prefix="t").reset()
    else:
        uri = f"leadsync+file://{tmp_path / 'limits.json'}"
    stamps = _run_two_processes(uri)
    # Never over the window, across processes. Stamps are read just after each slot is taken, and a
    # process may be descheduled in between: judge them over a window 50 ms shorter.
    assert _max_in_window(stamps, WINDOW - 0.05) <= LIMIT - 1
    # Spread, not one burst of the whole window (a loaded machine's scheduling blurs the second's edge).
    assert _max_in_window(stamps, 1.0 - 0.05) <= LIMIT // WINDOW + 2
    assert len(stamps) >= 2 * (LIMIT - 1)  # and close to the ceiling: two full windows in ~4 s


def test_hubspot_counting_more_than_us_fills_our_window() -> None:
    limiter = RateLimiter(MemoryStorage(), 100, "h")
    for _ in range(3):
        limiter.acquire(1)
    # Another tool used 50 of the app's requests: HubSpot says 47 remain although we sent only 3.
    limiter.observe({"X-HubSpot-RateLimit-Max": "100", "X-HubSpot-RateLimit-Remaining": "47"})
    assert limiter.used() == 3 + (53 - 3 - limiter.reserve)
    # A difference within the reserve (calls in flight, clock jitter) changes nothing.
    before = limiter.used()
    limiter.observe({"X-HubSpot-RateLimit-Max": "100", "X-HubSpot-RateLimit-Remaining": "47"})
    assert limiter.used() == before
    # HubSpot (nearly) out: so are we, until the window moves on.
    limiter.observe({"X-HubSpot-RateLimit-Max": "100", "X-HubSpot-RateLimit-Remaining": "1"})
    assert limiter.used() == limiter.window.amount
    with pytest.raises(RateLimitBusy) as busy:
        limiter.acquire(max_wait=0.2)
    assert 9 < busy.value.wait <= 10


def test_a_lower_limit_or_another_window_at_hubspot_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    limiter = RateLimiter(MemoryStorage(), 190, "w")
    limiter.observe({"X-HubSpot-RateLimit-Max": "100", "X-HubSpot-RateLimit-Remaining": "99"})
    assert "HUBSPOT_RATE_LIMIT is 190 but HubSpot allows 100" in caplog.text
    limiter.observe({"X-HubSpot-RateLimit-Interval-Milliseconds": "10000", "X-HubSpot-RateLimit-Remaining": "99"})
    assert "rate window" not in caplog.text
    limiter.observe({"X-HubSpot-RateLimit-Interval-Milliseconds": "1000", "X-HubSpot-RateLimit-Remaining": "99"})
    assert "HubSpot's rate window is 1000 ms, leadsync assumes 10 s" in caplog.text


def test_a_pause_stops_everyone_sharing_the_storage(tmp_path: Path) -> None:
    uri = f"leadsync+file://{tmp_path / 'limits.json'}"
    first, second = (RateLimiter(FileStorage(uri), 100, "p") for _ in range(2))
    first.pause(1)
    started = time.monotonic()
    second.acquire(max_wait=3)
    assert 0.9 <= time.monotonic() - started < 2
    first.pause(5)
    with pytest.raises(RateLimitBusy):
        second.acquire(max_wait=1)


def test_a_torn_state_file_starts_afresh(tmp_path: Path) -> None:
    path = tmp_path / "limits.json"
    path.write_text('{"windows": {"x": [1.0,')
    limiter = RateLimiter(FileStorage(f"leadsync+file://{path}"), 100, "t")
    assert limiter.acquire(1) < 0.1 and limiter.used() == 1


class _Refusing:
    """A client method answering 429 (with these headers) `times` times, then 200."""

    def __init__(self, times: int, headers: dict[str, str], body: str = "{}") -> None:
        self.times, self.headers, self.body, self.calls = times, headers, body, 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        assert kwargs["_request_timeout"] == 3  # every call carries the explicit timeout
        self.calls += 1
        if self.calls <= self.times:
            error = ApiException(status=429, reason="Too Many Requests")
            error.headers, error.body = self.headers, self.body
            raise error
        return "ok", 200, {"X-HubSpot-RateLimit-Remaining": "90", "X-HubSpot-RateLimit-Max": "100"}


def test_retry_after_is_honoured_by_every_worker() -> None:
    crm = HubSpotCrm("t", "http://127.0.0.1:9", timeout=3, retry=RetryPolicy(max_wait=5))
    method = _Refusing(1, {"Retry-After": "2", "X-HubSpot-RateLimit-Remaining": "0"})
    started = time.monotonic()
    assert crm._call(method) == "ok"
    assert 2 <= time.monotonic() - started < 3.5
    assert (method.calls, crm.stats.rate_limited, crm.stats.calls) == (2, 1, 2)


def test_a_wait_longer_than_the_patience_defers_the_batch() -> None:
    crm = HubSpotCrm("t", "http://127.0.0.1:9", timeout=3, retry=RetryPolicy(max_wait=1))
    method = _Refusing(1, {"Retry-After": "30"})
    with pytest.raises(CrmRateLimited) as refused:
        crm._call(method)
    assert method.calls == 1 and refused.value.retry_after >= 29  # one 429, then no more calls


def test_the_daily_limit_is_not_retried() -> None:
    crm = HubSpotCrm("t", "http://127.0.0.1:9", timeout=3)
    method = _Refusing(5, {}, body='{"policyName": "DAILY", "message": "You have reached your daily limit."}')
    with pytest.raises(CrmRateLimited) as refused:
        crm._call(method)
    assert method.calls == 1 and refused.value.policy == "DAILY" and refused.value.retry_after >= 900


def test_a_limiter_that_cannot_be_reached_is_a_temporary_error(hubspot: HubSpotEmulator) -> None:
    storage = RedisStorage(f"redis://127.0.0.1:{free_port()}/0", wrap_exceptions=True, socket_timeout=1)
    crm = HubSpotCrm("test-token", hubspot.url, timeout=3, limiter=RateLimiter(storage, 100, "x"))
    with pytest.raises(CrmTemporaryError, match="rate limiter unavailable"):
        crm.check()
    assert hubspot.count() == 0  # never calls HubSpot unmetered

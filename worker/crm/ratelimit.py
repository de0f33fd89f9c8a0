"""One HubSpot request budget for every worker process: `limits` moving windows in shared storage.

HubSpot counts an app's requests in a rolling 10-second window (HUBSPOT_RATE_LIMIT: 100 on
Free/Starter, 190 on Professional/Enterprise) and answers 429 past it. Every HubSpot call takes a slot
here first, so any number of workers together stay under the limit. Two windows, both `limits`
moving windows under one key per HubSpot app:

- the HubSpot window: the limit less a 2% reserve (at least 1), because our clock starts when a call
  leaves and HubSpot's when it arrives, and other tools may use the same app now and then;
- a one-second window of a tenth of the limit, so calls are spread evenly instead of spending the
  whole window in one burst (bursts are what collide with the jitter above).

HubSpot's own count comes back on every answer (X-HubSpot-RateLimit-Max/-Remaining); `observe` folds
it in when HubSpot has seen more than we did, so foreign usage is paid for too. A 429 `pause`s every
worker (Retry-After when HubSpot sends one).

Where the windows live: Redis when the broker is Redis (every worker on every machine shares it);
on the embedded default, `FileStorage`, a small JSON file under VAR_DIR behind an exclusive `flock`,
which every process of the one machine shares. `memory://` (one process) is for benchmarks and tests.

Example:
    >>> limiter = limiter_from_settings(settings)
    >>> limiter.acquire(max_wait=5.0)     # blocks until a request may go; RateLimitBusy past max_wait
    0.0
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import math
import os
import random
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from limits import RateLimitItemPerSecond
from limits.errors import StorageError
from limits.storage import MemoryStorage, MovingWindowSupport, RedisStorage, Storage
from limits.strategies import MovingWindowRateLimiter

from leadsync.config import Settings

log = logging.getLogger(__name__)

WINDOW_SECONDS = 10  # HubSpot's burst window for private apps (X-HubSpot-RateLimit-Interval-Milliseconds)
LIMITER_ERRORS = (StorageError, OSError)


class RateLimitBusy(Exception):
    """No slot within the caller's patience; `wait` is how long until one may free up."""

    def __init__(self, wait: float) -> None:
        super().__init__(f"HubSpot rate limit: next slot in {wait:.1f}s")
        self.wait = wait


class FileStorage(Storage, MovingWindowSupport):
    """A `limits` storage in one JSON file, shared by the processes of one machine through `flock`.

    The embedded default has no Redis; this is what keeps its worker processes under one limit.
    Supports the moving window and plain expiring counters (used for pauses).
    """

    STORAGE_SCHEME = ["leadsync+file"]

    def __init__(self, uri: str, wrap_exceptions: bool = False, **options: float | str | bool) -> None:
        super().__init__(uri, wrap_exceptions=wrap_exceptions, **options)
        self.path = Path(uri.split("://", 1)[1])
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_path = self.path.with_name(self.path.name + ".lock")

    @property
    def base_exceptions(self) -> type[Exception] | tuple[type[Exception], ...]:
        return (OSError, ValueError)

    @contextlib.contextmanager
    def _state(self) -> Iterator[dict[str, Any]]:
        """The whole state under the machine-wide lock; written back (atomically) when changed."""
        with self._lock_path.open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                text = self.path.read_text(encoding="utf-8")
            except FileNotFoundError:
                text = ""
            try:
                state = json.loads(text) if text else {}
            except ValueError:  # a torn file from a crash: start afresh rather than stop syncing
                state = {}
            state.setdefault("windows", {})
            state.setdefault("counters", {})
            yield state
            new_text = json.dumps(state, separators=(",", ":"))
            if new_text != text:
                temporary = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
                temporary.write_text(new_text, encoding="utf-8")
                os.replace(temporary, self.path)

    def acquire_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        if amount > limit:
            return False
        with self._state() as state:
            now = time.time()  # read under the lock, so entries are in the order they were granted
            entries = [t for t in state["windows"].get(key, []) if t > now - expiry]  # newest first
            acquired = len(entries) + amount <= limit
            if acquired:
                entries[:0] = [now] * amount
            state["windows"][key] = entries[:limit]
        return acquired

    def get_moving_window(self, key: str, limit: int, expiry: int) -> tuple[float, int]:
        with self._state() as state:
            now = time.time()
            entries = [t for t in state["windows"].get(key, []) if t > now - expiry]
        return (entries[-1], len(entries)) if entries else (now, 0)

    def incr(self, key: str, expiry: float, amount: int = 1) -> int:
        with self._state() as state:
            now = time.time()
            value, expires = state["counters"].get(key, (0, 0.0))
            if expires <= now:
                value, expires = 0, now + expiry
            state["counters"][key] = (value + amount, expires)
        return value + amount

    def get(self, key: str) -> int:
        with self._state() as state:
            value, expires = state["counters"].get(key, (0, 0.0))
        return value if expires > time.time() else 0

    def get_expiry(self, key: str) -> float:
        with self._state() as state:
            _, expires = state["counters"].get(key, (0, 0.0))
        return max(expires, time.time())

    def check(self) -> bool:
        with self._state():
            return True

    def reset(self) -> int | None:
        with self._state() as state:
            count = len(state["windows"]) + len(state["counters"])
            state["windows"].clear()
            state["counters"].clear()
        return count

    def clear(self, key: str) -> None:
        with self._state() as state:
            state["windows"].pop(key, None)
            state["counters"].pop(key, None)


def _header(headers: Mapping[str, str] | None, name: str) -> int | None:
    if not headers:
        return None
    for key, value in headers.items():
        if key.lower() == name:
            try:
                return int(float(value))
            except (TypeError, ValueError):
                return None
    return None


class RateLimiter:
    """The shared HubSpot budget: `acquire` before each call, `observe` each answer, `pause` on a 429."""

    def __init__(
        self,
        storage: Storage,
        limit: int,
        identity: str = "hubspot",
        window_seconds: int = WINDOW_SECONDS,
        reserve: int | None = None,
    ) -> None:
        self.limit = limit
        self.reserve = max(1, limit // 50) if reserve is None else reserve
        self.window = RateLimitItemPerSecond(max(1, limit - self.reserve), window_seconds)
        self.burst = RateLimitItemPerSecond(max(1, math.ceil(limit / window_seconds)), 1)
        self.identity = identity
        self._storage = storage
        self._limiter = MovingWindowRateLimiter(storage)
        self._pause_key = f"leadsync/pause/{identity}"
        self._warned_max: int | None = None
        self._warned_interval: int | None = None

    def __repr__(self) -> str:
        return f"RateLimiter({self.limit}/{self.window.get_expiry()}s, {type(self._storage).__name__})"

    def acquire(self, max_wait: float) -> float:
        """Take one request slot, sleeping while none is free; returns the seconds waited.

        Raises RateLimitBusy when the next slot is further away than `max_wait` (the caller defers
        its batch rather than hold a worker), and StorageError/OSError when the storage is away.
        """
        started = time.monotonic()
        while True:
            wait = self._try_take()
            waited = time.monotonic() - started
            if wait <= 0:
                return waited
            if waited + wait > max_wait:
                raise RateLimitBusy(wait)
            time.sleep(wait + random.uniform(0, 0.02))  # jitter: waiting workers do not wake together

    def _try_take(self) -> float:
        """0 when a slot was taken, else the seconds until one may be free."""
        now = time.time()
        if self._storage.get(self._pause_key):
            return max(0.01, self._storage.get_expiry(self._pause_key) - now)
        for item in (self.burst, self.window):
            if not self._limiter.test(item, self.identity):
                reset = self._limiter.get_window_stats(item, self.identity).reset_time
                return max(0.01, reset - now)
        if not self._limiter.hit(self.burst, self.identity) or not self._limiter.hit(self.window, self.identity):
            return 0.01  # another worker took it between test and hit
        return 0.0

    def observe(self, headers: Mapping[str, str] | None) -> None:
        """Fold HubSpot's count into ours when HubSpot saw more (other tools on the same app, a lower
        limit than configured, a 429): the extra slots are taken now and free up a window later."""
        remaining = _header(headers, "x-hubspot-ratelimit-remaining")
        if remaining is None:
            return
        maximum = _header(headers, "x-hubspot-ratelimit-max") or self.limit
        if maximum < self.limit and self._warned_max != maximum:
            self._warned_max = maximum
            log.warning("HUBSPOT_RATE_LIMIT is %d but HubSpot allows %d per window: lower it", self.limit, maximum)
        interval = _header(headers, "x-hubspot-ratelimit-interval-milliseconds")
        if interval and interval != self.window.get_expiry() * 1000 and self._warned_interval != interval:
            self._warned_interval = interval  # (HubSpot has used 10 s for years; say so if that ever changes)
            log.warning("HubSpot's rate window is %d ms, leadsync assumes %d s", interval, self.window.get_expiry())
        reserve = self.reserve if maximum >= self.limit else max(1, maximum // 50)
        stats = self._limiter.get_window_stats(self.window, self.identity)
        if remaining < reserve:  # HubSpot is (nearly) out, whatever we counted: so are we
            extra = stats.remaining
        else:  # HubSpot counted more than we did, beyond the reserve: someone else uses the app
            extra = min((maximum - remaining) - (self.window.amount - stats.remaining) - reserve, stats.remaining)
        if extra > 0:
            self._limiter.hit(self.window, self.identity, cost=extra)

    def pause(self, seconds: float) -> None:
        """Stop every worker for `seconds` (after a 429)."""
        self._storage.incr(self._pause_key, max(1, math.ceil(seconds)))

    def used(self) -> int:
        """Requests counted in the current window (for status and benchmarks)."""
        return self.window.amount - self._limiter.get_window_stats(self.window, self.identity).remaining


def identity_for(token: str, base_url: str) -> str:
    """One budget per HubSpot app; the key never shows the token."""
    return "hubspot-" + hashlib.sha256(f"{base_url.rstrip('/')}|{token}".encode()).hexdigest()[:16]


def memory_limiter(limit: int = 100, identity: str = "hubspot") -> RateLimiter:
    """A limiter for one process (benchmarks, tests)."""
    return RateLimiter(MemoryStorage(), limit, identity)


def limiter_from_settings(settings: Settings, token: str) -> RateLimiter:
    """Redis when the broker is Redis, else the machine-wide file under VAR_DIR."""
    url = settings.celery_broker_url
    storage: Storage
    if url.startswith(("redis://", "rediss://")):
        storage = RedisStorage(url, wrap_exceptions=True, key_prefix="leadsync", socket_timeout=5)
    else:
        storage = FileStorage(f"leadsync+file://{(settings.var_dir / 'hubspot-ratelimit.json').resolve()}")
    return RateLimiter(storage, settings.hubspot_rate_limit, identity_for(token, settings.hubspot_base_url))

"""The per-IP and per-email rate limits of form posts, counted for a whole group-commit batch at once.

A moving window: a hit is allowed while fewer than `amount` allowed hits fall in the last `period` seconds,
and a refused hit is not recorded (the semantics of limits' MovingWindowRateLimiter, which counted these
limits one post at a time before). The rules, post by post in the batch's order:

- every post counts against its client address (RATE_LIMIT_PER_IP); over it, the post is `ip_rate` spam
  unless it already is spam for another reason;
- only a post that is not spam yet counts against its mailbox (RATE_LIMIT_PER_EMAIL): a bot's honeypot
  posts must not lock its victim out. Over it: `email_rate`.

Why a batch: on Redis, one moving-window Lua script a post cost ~9% of a post's CPU on the event loop
(docs/benchmarks.md "Intake"). Here the group-commit writer's thread runs ONE script call a batch (up to
INTAKE_BATCH_MAX posts: one round trip, a sorted set a counter), before the batch's transaction; on the
embedded default the counters are limits' in-memory moving window, no I/O. If Redis does not answer (0.5 s
timeouts), the batch is let through and a warning logged once a minute: a lead is never lost because a
counter is down.

Example:
    >>> counter = BatchCounter(parse("20 per 10 minutes"), parse("5 per hour"), "redis://127.0.0.1:6379/0")
    >>> counter.verdicts([Hit(None, "203.0.113.9", "k1"), Hit("honeypot", "203.0.113.9", "k1")])
    [None, 'honeypot']
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Sequence
from typing import NamedTuple

import redis
from limits import RateLimitItem
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter
from redis.exceptions import RedisError

log = logging.getLogger(__name__)
KEY_PREFIX = "leadsync-forms:window"

# KEYS: two a post, its IP counter and its mailbox counter; "" for a counter not to touch (the limit is off,
# or, for the mailbox, the post is spam already or over its IP limit here).
# ARGV: now (ms), IP limit, IP window (ms), email limit, email window (ms), a batch-unique member prefix.
# Returns one code a post: 0 allowed, 1 over the IP limit, 2 over the email limit.
_SCRIPT = """
local now = tonumber(ARGV[1])
local function hit(key, limit, window, member)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
  if redis.call('ZCARD', key) >= limit then return false end
  redis.call('ZADD', key, now, member)
  redis.call('PEXPIRE', key, window)
  return true
end
local ip_limit, ip_window = tonumber(ARGV[2]), tonumber(ARGV[3])
local email_limit, email_window = tonumber(ARGV[4]), tonumber(ARGV[5])
local codes = {}
for i = 1, #KEYS / 2 do
  local ip_key, email_key, code = KEYS[2 * i - 1], KEYS[2 * i], 0
  if ip_key ~= '' and not hit(ip_key, ip_limit, ip_window, ARGV[6] .. i) then code = 1 end
  if code == 0 and email_key ~= '' and not hit(email_key, email_limit, email_window, ARGV[6] .. i) then code = 2 end
  codes[i] = code
end
return codes
"""
_REASONS = {0: None, 1: "ip_rate", 2: "email_rate"}


class Hit(NamedTuple):
    """One post to count: the reason it is spam already (or None), its IP key, its mailbox key ("": a post
    that is spam already, which must not count against the mailbox)."""

    reason: str | None
    ip_key: str
    email_key: str


class BatchCounter:
    """The rate-limit counters of one web process: on Redis (shared by every process) or in memory."""

    def __init__(self, per_ip: RateLimitItem | None, per_email: RateLimitItem | None, redis_url: str | None) -> None:
        self.per_ip, self.per_email = per_ip, per_email
        self._memory = MovingWindowRateLimiter(MemoryStorage())
        self._script = None
        if redis_url is not None:
            # Short timeouts: a batch of answers waits for this call, and a slow Redis must not hold them.
            client = redis.Redis.from_url(redis_url, socket_timeout=0.5, socket_connect_timeout=0.5)
            self._script = client.register_script(_SCRIPT)
        self._warned_at = 0.0

    def verdicts(self, hits: Sequence[Hit]) -> list[str | None]:
        """The spam reason of each post after counting (its own reason first), in order."""
        if not hits or (self.per_ip is None and self.per_email is None):
            return [hit.reason for hit in hits]
        if self._script is None:
            return [self._memory_verdict(hit) for hit in hits]
        keys: list[str] = []
        for hit in hits:
            keys.append(f"{KEY_PREFIX}:ip:{hit.ip_key}" if self.per_ip else "")
            keys.append(f"{KEY_PREFIX}:email:{hit.email_key}" if self.per_email and hit.email_key else "")
        ip, email = self.per_ip, self.per_email
        args: list[str | int] = [
            int(time.time() * 1000),
            ip.amount if ip else 0,
            ip.get_expiry() * 1000 if ip else 0,
            email.amount if email else 0,
            email.get_expiry() * 1000 if email else 0,
            secrets.token_hex(8) + ":",  # sorted-set members must differ: one prefix a batch, then the index
        ]
        try:
            codes = self._script(keys=keys, args=args)
        except (RedisError, OSError) as error:
            if time.monotonic() - self._warned_at > 60:  # once a minute, not once a batch
                self._warned_at = time.monotonic()
                log.warning("rate-limit storage unavailable, posts are not counted: %s", type(error).__name__)
            return [hit.reason for hit in hits]
        return [hit.reason or _REASONS[int(code)] for hit, code in zip(hits, codes, strict=True)]

    def _memory_verdict(self, hit: Hit) -> str | None:
        reason = hit.reason
        if self.per_ip is not None and not self._memory.hit(self.per_ip, "ip", hit.ip_key):
            reason = reason or "ip_rate"
        if (
            reason is None
            and self.per_email is not None
            and not self._memory.hit(self.per_email, "email", hit.email_key)
        ):
            reason = "email_rate"
        return reason

"""Deciding whether a valid post is spam, the same way for every form and every body encoding.

A spam post is stored (status 'spam' with a `spam_reason`, for operations to count) and answered exactly like
a success, so the bot learns nothing; it is never enqueued, so it gets no email and no CRM record. The rules,
first match wins:

- `honeypot`: the hidden `website` field is filled;
- `token_too_fast` / `token_expired` / `token_bad`: the render-time token (forms/tokens.py) is not `ok`;
- `ip_rate`: the client address posted more than RATE_LIMIT_PER_IP (IPv6 counted per /64, what one host
  usually gets; an IPv4-mapped IPv6 address `::ffff:a.b.c.d` as its IPv4);
- `email_rate`: the mailbox was submitted more than RATE_LIMIT_PER_EMAIL, whoever sent it and however it was
  spelled (`victim+1@`, `Victim@`: leadsync/mailbox.py), the list-bombing defence.

The confirm / unsubscribe links have a limit of their own per client address (RATE_LIMIT_LINKS_PER_IP,
`allow_link`): guessing or replaying tokens is answered 429.

Disposable addresses are not spam but a field error (`refused_email`): a person using one can fix it.

Counters live in Redis (RATE_LIMIT_STORAGE_URL, else the broker when it is Redis), shared by every web
process; on the embedded default they live in process memory, so each `leadsync web` process counts on its
own (documented in the README). If Redis does not answer, the post is let through and a warning logged:
a lead is never lost because a counter is down.

The request decides what the post's own content says (`content_reason`: honeypot, token); the two counters
run in the group-commit writer for the whole batch, one Redis round trip a batch (`count`,
forms/ratelimit.py). The link limit stays a per-request asyncio call (limits on redis-py's asyncio client).

Example:
    >>> guard = SpamGuard(settings)
    >>> guard.content_reason(parsed_with_honeypot)
    'honeypot'
    >>> [new.spam_reason for new in guard.count([ann, ann_again])]     # in the writer's thread
    [None, 'email_rate']
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import replace

import disposable_email_domains
from limits import RateLimitItem, aio, parse
from limits.errors import StorageError
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter
from redis.exceptions import RedisError

from leadsync.config import Settings
from leadsync.forms.ratelimit import BatchCounter, Hit
from leadsync.forms.schemas import MetaFields
from leadsync.forms.tokens import check
from leadsync.mailbox import mailbox_key
from leadsync.storage.submissions import NewSubmission

log = logging.getLogger(__name__)
DISPOSABLE_MESSAGE = "Please use a permanent email address: we cannot send to disposable inboxes."
_STORAGE_ERRORS = (StorageError, RedisError, OSError)
SUSPECT_SECONDS = 60.0  # an address that sent spam stays a suspect this long (forms/shedding.py)
SUSPECTS_MAX = 10_000  # addresses remembered at most (~1 MB)


def is_disposable(email: str) -> bool:
    """The domain or any parent of it is on the maintained disposable-domains list."""
    labels = email.rpartition("@")[2].lower().rstrip(".").split(".")
    return any(".".join(labels[i:]) in disposable_email_domains.blocklist for i in range(len(labels) - 1))


def refused_email(email: str, settings: Settings) -> dict[str, str]:
    """Field errors for an address we will not take (a disposable inbox), else {}."""
    if settings.block_disposable_emails and is_disposable(email):
        return {"email": DISPOSABLE_MESSAGE}
    return {}


def unwrap_ip(ip: str) -> str:
    """`::ffff:203.0.113.9` (an IPv4 client of a server bound to `::`) -> `203.0.113.9`; others unchanged."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    mapped = getattr(address, "ipv4_mapped", None)
    return str(mapped) if mapped is not None else ip


# An IPv4 address as ipaddress writes it (no leading zeros): its own key, without parsing it twice per post
# (ipaddress costs ~10 µs a parse; this key is taken by the shedding door and the rate limits on every post).
_CANONICAL_IPV4 = re.compile(r"(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)")


def client_key(ip: str | None) -> str:
    """The rate-limit key of a client address: IPv4 as is (IPv4-mapped IPv6 too), IPv6 by its /64 network."""
    if not ip:
        return "unknown"
    if _CANONICAL_IPV4.fullmatch(ip):
        return ip
    try:
        address = ipaddress.ip_address(unwrap_ip(ip))
    except ValueError:
        return ip[:64]
    if address.version == 6:
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


def _redis_url(settings: Settings) -> str | None:
    url = settings.rate_limit_storage_url or settings.celery_broker_url
    return url if url.startswith(("redis://", "rediss://")) else None


class SpamGuard:
    """The spam rules of one web process, with its rate-limit counters."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.per_ip: RateLimitItem | None = parse(settings.rate_limit_per_ip) if settings.rate_limit_per_ip else None
        self.per_email: RateLimitItem | None = (
            parse(settings.rate_limit_per_email) if settings.rate_limit_per_email else None
        )
        self.links: RateLimitItem | None = (
            parse(settings.rate_limit_links_per_ip) if settings.rate_limit_links_per_ip else None
        )
        self._redis_url = _redis_url(settings)
        self._memory = MovingWindowRateLimiter(MemoryStorage())  # the embedded default: no I/O, called inline
        self._redis: aio.strategies.MovingWindowRateLimiter | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._warned_at = 0.0
        # The per-IP and per-email counters, counted a batch at a time in the group-commit writer.
        self._counters = BatchCounter(self.per_ip, self.per_email, self._redis_url)
        self._spam_seen: dict[str, float] = {}  # client key -> when it last sent spam (monotonic)

    def _async_limiter(self) -> aio.strategies.MovingWindowRateLimiter:
        """The Redis limiter of the running event loop (an asyncio client belongs to one loop)."""
        loop = asyncio.get_running_loop()
        if self._redis is None or self._loop is not loop:
            assert self._redis_url is not None
            # Short timeouts: the counter sits on the request path, and a slow Redis must not hold posts.
            storage = aio.storage.RedisStorage(
                f"async+{self._redis_url}",
                implementation="redispy",
                wrap_exceptions=True,
                key_prefix="leadsync-forms",
                socket_timeout=0.5,
                socket_connect_timeout=0.5,
            )
            self._redis, self._loop = aio.strategies.MovingWindowRateLimiter(storage), loop
        return self._redis

    def __repr__(self) -> str:
        return f"SpamGuard(ip={self.per_ip}, email={self.per_email}, {'redis' if self._redis_url else 'memory'})"

    def content_reason(self, parsed: MetaFields) -> str | None:
        """The spam reason a post's own content gives (the honeypot, the render-time token), or None. Cheap and
        without I/O: it runs in the request; the counters run for the whole batch in `count`."""
        if parsed.website:
            return "honeypot"
        if parsed.ts_token:
            verdict = check(
                parsed.ts_token,
                self.settings.signing_keys,
                self.settings.form_min_fill_seconds,
                self.settings.form_token_max_age_seconds,
            )
            return None if verdict == "ok" else f"token_{verdict}"
        return None

    def count(self, batch: Sequence[NewSubmission]) -> list[NewSubmission]:
        """The batch with each post's final spam reason: the group-commit writer calls this in its thread,
        before the transaction, so the counters cost one Redis round trip a batch (forms/ratelimit.py)."""
        if self.per_ip is None and self.per_email is None:
            self._note_spam(client_key(new.ip) for new in batch if new.spam_reason)
            return list(batch)
        signing_key = self.settings.signing_key
        hits = [
            Hit(
                new.spam_reason,
                client_key(new.ip),
                # One inbox one key (ann+1@, Ann@ alike); no address in Redis. Not needed for posts already spam.
                mailbox_key(new.email, signing_key) if self.per_email and not new.spam_reason else "",
            )
            for new in batch
        ]
        reasons = self._counters.verdicts(hits)
        self._note_spam(hit.ip_key for hit, reason in zip(hits, reasons, strict=True) if reason)
        return [
            new if reason == new.spam_reason else replace(new, spam_reason=reason)
            for new, reason in zip(batch, reasons, strict=True)
        ]

    def suspect(self, client: str) -> bool:
        """Whether the address `client` (its rate-limit key) sent spam in the last SUSPECT_SECONDS: the door
        (forms/shedding.py) gives it fewer posts in flight, so a flood cannot take the CPU real visitors need."""
        seen = self._spam_seen.get(client)
        return seen is not None and time.monotonic() - seen < SUSPECT_SECONDS

    def _note_spam(self, clients: Iterable[str]) -> None:
        now = time.monotonic()
        if len(self._spam_seen) > SUSPECTS_MAX:  # a spread-out botnet: forget the old ones, keep memory bounded
            self._spam_seen = {k: t for k, t in self._spam_seen.items() if now - t < SUSPECT_SECONDS}
            if len(self._spam_seen) > SUSPECTS_MAX:
                self._spam_seen.clear()
        for client in clients:
            self._spam_seen[client] = now  # one dict store: safe from the writer's thread, read on the loop

    async def allow_link(self, ip: str | None) -> bool:
        """Whether a confirm / unsubscribe link request from `ip` is within RATE_LIMIT_LINKS_PER_IP."""
        return await self._hit(self.links, "link", client_key(ip))

    async def _hit(self, item: RateLimitItem | None, scope: str, key: str) -> bool:
        """True while under the limit (or no limit, or the counters are away)."""
        if item is None:
            return True
        if self._redis_url is None:
            return self._memory.hit(item, scope, key)
        try:
            return await self._async_limiter().hit(item, scope, key)
        except _STORAGE_ERRORS as error:
            if time.monotonic() - self._warned_at > 60:  # once a minute, not once a post
                self._warned_at = time.monotonic()
                log.warning("rate-limit storage unavailable, posts are not counted: %s", type(error).__name__)
            return True

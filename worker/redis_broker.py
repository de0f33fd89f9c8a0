"""kombu's Redis transport with one publishing client a connection pool, not one a message.

kombu's Redis channel builds a new `redis.Redis` for every message it publishes (`Channel._put` ->
`conn_or_acquire` -> `_create_client`), and redis-py's constructor fills a case-insensitive table of ~80
response callbacks each time: 0.45 ms of CPU, 40% of a whole Celery publish (1.05 ms, of which the LPUSH
itself is 0.3 ms; docs/benchmarks.md "Fourth round"). The web publishes once a group commit, the worker once
a batch of emails. A `redis.Redis` over a connection pool is thread-safe (each command borrows a pooled
connection), so one client a pool serves every publish; when kombu drops its pools (a reconnect), the next
publish builds a client over the new pool. Consuming (BRPOP, the async client) is kombu's, unchanged.

Selected by `worker/celery_app.py` for `redis://` broker URLs. `rediss://` stays on kombu's own transport,
whose TLS defaults depend on that scheme's name.

Example:
    app.conf.broker_url = "leadsync-redis://redis:6379/0"   # what celery_config makes of redis://redis:6379/0
"""

from __future__ import annotations

from typing import Any

from kombu.transport import TRANSPORT_ALIASES, redis

SCHEME = "leadsync-redis"


class Channel(redis.Channel):
    _publisher: tuple[Any, Any] | None = None  # (the pool, the client over it)

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:
            return super()._create_client(asynchronous=True)
        pool = self.pool  # a new pool after kombu dropped the old one: a new client with it
        if self._publisher is None or self._publisher[0] is not pool:
            self._publisher = (pool, super()._create_client())
        return self._publisher[1]


class Transport(redis.Transport):
    Channel = Channel


TRANSPORT_ALIASES.setdefault(SCHEME, f"{__name__}:Transport")

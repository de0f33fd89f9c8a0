"""The one OPS_TOKEN policy, for every operations door: the web's `/metrics` (and any other operations
endpoint) and the CLI commands that change state.

- Over HTTP it fails closed: 403 while OPS_TOKEN is unset, 401 without `Authorization: Bearer <OPS_TOKEN>`.
- On the command line it is open while OPS_TOKEN is unset (the embedded default on one machine, where the
  operator owns the files anyway); once set, `--ops-token` / LEADSYNC_OPS_TOKEN must match.

Both compare in constant time (`hmac.compare_digest`).

Example:
    >>> http_refusal(settings, "Bearer wrong")
    Refusal(status=401, field='authorization', message='Send Authorization: Bearer <OPS_TOKEN>.')
    >>> cli_allows(settings, presented=None)  # OPS_TOKEN set, nothing presented
    False
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from leadsync.config import Settings

CHALLENGE = 'Bearer realm="leadsync-ops"'  # the WWW-Authenticate header of a 401


@dataclass(frozen=True)
class Refusal:
    status: int  # 403: no OPS_TOKEN configured; 401: not presented or wrong
    field: str
    message: str


def configured(settings: Settings) -> bool:
    return bool(settings.ops_token and settings.ops_token.get_secret_value())


def matches(presented: str | None, settings: Settings) -> bool:
    """Whether `presented` is OPS_TOKEN, compared in constant time. No OPS_TOKEN set: nothing matches."""
    expected = settings.ops_token.get_secret_value() if settings.ops_token else ""
    if not expected or not presented:
        return False
    return hmac.compare_digest(presented.encode("utf-8"), expected.encode("utf-8"))


def http_refusal(settings: Settings, authorization: str) -> Refusal | None:
    """None when the `Authorization` header carries the bearer OPS_TOKEN, else why not (fails closed)."""
    if not configured(settings):
        return Refusal(403, "authorization", "OPS_TOKEN is not configured on this server.")
    scheme, _, presented = authorization.partition(" ")
    if scheme.lower() != "bearer" or not matches(presented.strip(), settings):
        return Refusal(401, "authorization", "Send Authorization: Bearer <OPS_TOKEN>.")
    return None


def cli_allows(settings: Settings, presented: str | None) -> bool:
    """A state-changing command runs when OPS_TOKEN is unset, or when the operator presents it."""
    return not configured(settings) or matches(presented, settings)

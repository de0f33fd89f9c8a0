"""The CRM sync's shared service state (rows of `service_state`, seen by every flusher on every worker):
stopped on a refused token, paused while HubSpot is down or the daily limit is spent, and the budget
HubSpot reports; with its picture for `leadsync status`.

- `hubspot_auth` {ok, detail, at, token, retry_at}: a 401/403 stops syncing until the token changes, a
  probe every AUTH_RETRY (10 minutes) succeeds, or `leadsync hubspot check` lifts it (`resume`).
- `hubspot_pause` {until, failures, detail}: an outage pauses every flusher with a growing, jittered
  backoff (5 s doubling to 300 s); a rate-limit wait over LONG_RATE_WAIT (the daily limit) pauses too.
- `hubspot_rate`: the daily budget and today's 429s, merged from every process's `Crm.take_budget()`.

Example:
    >>> why = stopped(session_factory, crm, utcnow())  # None, or why this flush must not call HubSpot
    >>> after_flush(session_factory, crm, failure, utcnow())  # the state after a flush, failure or None
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from leadsync import backoff
from leadsync.storage.models import ServiceState
from leadsync.worker.crm.port import (
    Crm,
    CrmAuthError,
    CrmError,
    CrmRateLimited,
    CrmRejected,
    CrmTemporaryError,
)

log = logging.getLogger(__name__)

AUTH_STATE = "hubspot_auth"  # {ok, detail, at, token, retry_at}
PAUSE_STATE = "hubspot_pause"  # {until, failures, detail}: HubSpot down or the daily limit reached
RATE_STATE = "hubspot_rate"  # the daily budget and 429s, for `leadsync status`
AUTH_RETRY = timedelta(minutes=10)
PAUSE_BASE, PAUSE_CAP = 5.0, 300.0  # seconds
LONG_RATE_WAIT = 30.0  # a rate-limit wait longer than this (the daily limit) pauses every flusher


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds")


def stopped(session_factory: Callable[[], Session], crm: Crm, now: datetime) -> str | None:
    """Why this flush must not call HubSpot now, or None."""
    with session_factory() as session:
        auth = session.get(ServiceState, AUTH_STATE)
        pause = session.get(ServiceState, PAUSE_STATE)
        auth_value = dict(auth.value) if auth is not None else {}
        pause_value = dict(pause.value) if pause is not None else {}
    if auth_value and not auth_value.get("ok") and auth_value.get("token") == crm.fingerprint:
        retry_at = auth_value.get("retry_at")
        if retry_at and now < datetime.fromisoformat(retry_at):
            return f"CRM sync stopped: HubSpot refuses the token ({auth_value.get('detail')}); next try {retry_at}"
    until = pause_value.get("until")
    if until and now < datetime.fromisoformat(until):
        return f"CRM sync paused until {until}: {pause_value.get('detail')}"
    return None


def after_flush(session_factory: Callable[[], Session], crm: Crm, failure: CrmError | None, now: datetime) -> None:
    """Update the shared state after a flush: auth stop, outage pause, budget."""
    with session_factory() as session, session.begin():
        auth = session.get(ServiceState, AUTH_STATE)
        pause = session.get(ServiceState, PAUSE_STATE)
        if isinstance(failure, CrmAuthError):
            log.error(
                "HubSpot refused the token; CRM sync is STOPPED (contacts stay pending) until it is fixed: %s. "
                "Check with `leadsync hubspot check`.",
                failure,
            )
            _put(
                session,
                auth,
                AUTH_STATE,
                ok=False,
                detail=str(failure),
                at=_iso(now),
                token=crm.fingerprint,
                retry_at=_iso(now + AUTH_RETRY),
            )
        elif failure is None or isinstance(failure, CrmRejected):
            if auth is None or not auth.value.get("ok"):
                _put(session, auth, AUTH_STATE, ok=True, detail=None, at=_iso(now), token=crm.fingerprint)
            if pause is not None and pause.value.get("failures"):
                _put(session, pause, PAUSE_STATE, until=None, failures=0, detail=None)
        elif isinstance(failure, CrmTemporaryError):
            failures = int((pause.value if pause is not None else {}).get("failures") or 0) + 1
            wait = backoff.jittered(failures, PAUSE_BASE, PAUSE_CAP)
            log.warning("HubSpot unavailable (%s); all flushers pause %.0fs (failure %d)", failure, wait, failures)
            _put(
                session,
                pause,
                PAUSE_STATE,
                until=_iso(now + timedelta(seconds=wait)),
                failures=failures,
                detail=str(failure),
            )
        elif isinstance(failure, CrmRateLimited) and failure.retry_after > LONG_RATE_WAIT:
            log.error("HubSpot rate limit %s: pausing %.0fs", failure.policy or "", failure.retry_after)
            _put(
                session,
                pause,
                PAUSE_STATE,
                until=_iso(now + timedelta(seconds=failure.retry_after)),
                failures=0,
                detail=str(failure),
            )
        _record_budget(session, crm, now)


def _put(session: Session, row: ServiceState | None, key: str, **value: object) -> None:
    if row is None:
        session.add(ServiceState(key=key, value=value))
    else:
        row.value = value


def _record_budget(session: Session, crm: Crm, now: datetime) -> None:
    """Merge this process's view of the HubSpot budget into the shared `hubspot_rate` state."""
    budget, new_429s = crm.take_budget()
    row = session.get(ServiceState, RATE_STATE)
    value = dict(row.value) if row is not None else {}
    today = now.date().isoformat()
    if value.get("day") != today:
        value.update(day=today, rate_limited_today=0)
    value["rate_limited_today"] = int(value.get("rate_limited_today") or 0) + new_429s
    for name in ("daily_limit", "daily_remaining", "window_max", "window_remaining"):
        if getattr(budget, name) is not None:
            value[name] = getattr(budget, name)
    if budget.last_429_at and budget.last_429_at > str(value.get("last_429_at") or ""):
        value.update(last_429_at=budget.last_429_at, last_429_policy=budget.last_429_policy)
    value["rate_limit"] = budget.rate_limit
    value["at"] = _iso(now)
    _put(session, row, RATE_STATE, **value)


def resume(session_factory: Callable[[], Session]) -> None:
    """Lift an auth stop or an outage pause (after `leadsync hubspot check` succeeded)."""
    with session_factory() as session, session.begin():
        for key in (AUTH_STATE, PAUSE_STATE):
            row = session.get(ServiceState, key)
            if row is not None:
                session.delete(row)


def token_status(session: Session) -> tuple[bool, str | None]:
    """(ok, HubSpot's refusal) as the last flush saw the token; ok while no flush has called HubSpot yet."""
    row = session.get(ServiceState, AUTH_STATE)
    if row is None:
        return True, None
    return bool(row.value.get("ok")), row.value.get("detail")


def hubspot_status(session: Session, now: datetime) -> tuple[dict[str, object], list[str], list[str]]:
    """For `leadsync status`: the daily budget, the last 429, a stop or pause; with reasons and notes."""
    rows = {key: session.get(ServiceState, key) for key in (RATE_STATE, PAUSE_STATE, AUTH_STATE)}
    rate = dict(rows[RATE_STATE].value) if rows[RATE_STATE] is not None else {}
    pause = dict(rows[PAUSE_STATE].value) if rows[PAUSE_STATE] is not None else {}
    picture: dict[str, object] = {
        key: rate.get(key)
        for key in ("daily_limit", "daily_remaining", "last_429_at", "last_429_policy", "rate_limit", "window_max")
    }
    picture["rate_limited_today"] = (
        rate.get("rate_limited_today", 0) if rate.get("day") == now.date().isoformat() else 0
    )
    picture["daily_used"] = (
        rate["daily_limit"] - rate["daily_remaining"]
        if rate.get("daily_limit") is not None and rate.get("daily_remaining") is not None
        else None
    )
    reasons: list[str] = []
    notes: list[str] = []
    until = pause.get("until")
    picture["paused_until"] = until if until and now < datetime.fromisoformat(until) else None
    if picture["paused_until"]:
        reasons.append(f"HubSpot sync paused until {until}: {pause.get('detail')}")
    if rate:
        budget = (
            f"{picture['daily_used']:,} of {rate['daily_limit']:,} calls used today"
            if picture["daily_used"] is not None
            else "daily budget not reported yet"
        )
        last = f"{rate.get('last_429_policy')} at {rate.get('last_429_at')}" if rate.get("last_429_at") else "never"
        notes.append(f"HubSpot: {budget}; 429s today {picture['rate_limited_today']}; last 429 {last}")
        if rate.get("window_max") and rate["window_max"] < int(rate.get("rate_limit") or 0):
            notes.append(f"HUBSPOT_RATE_LIMIT is {rate['rate_limit']} but HubSpot allows {rate['window_max']}")
    return picture, reasons, notes

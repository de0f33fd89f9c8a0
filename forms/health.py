"""Liveness and readiness: `/healthz` says the process is up, `/readyz` that it can do its job."""

from __future__ import annotations

import logging

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse

from leadsync.storage.db import ping as database_ping
from leadsync.worker.enqueue import broker_ping

log = logging.getLogger(__name__)


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> JSONResponse:
    checks: dict[str, str] = {}
    for name, check in (("database", database_ping), ("broker", broker_ping)):
        try:
            await run_in_threadpool(check)
            checks[name] = "ok"
        except Exception as error:  # any failure means "not ready", with the reason
            checks[name] = f"unavailable: {error.__class__.__name__}"
    ready = all(value == "ok" for value in checks.values())
    return JSONResponse(
        {"status": "ready" if ready else "unavailable", "checks": checks}, status_code=200 if ready else 503
    )

"""The ASGI application: routes and middleware, nothing more.

Example:
    $ leadsync web --port 8000        # or: uvicorn --factory leadsync.forms.app:create_app
"""

from __future__ import annotations

import gc
from importlib.resources import files

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from leadsync import status_metrics
from leadsync.config import Settings, get_settings
from leadsync.forms import subscriptions
from leadsync.forms.edge import Edge
from leadsync.forms.group_commit import GroupCommit, Overloaded
from leadsync.forms.health import healthz, readyz
from leadsync.forms.openapi import openapi_document
from leadsync.forms.pages import demo, thank_you
from leadsync.forms.security import require_ops_token
from leadsync.forms.shedding import OVERLOADED_MESSAGE as OVERLOADED_MESSAGE  # tests and pages import it here
from leadsync.forms.shedding import ShedLoad, overloaded
from leadsync.forms.spam import SpamGuard
from leadsync.forms.submit import FormEndpoint, store_batch
from leadsync.forms.tokens import token_endpoint
from leadsync.worker.enqueue import enqueue_submissions

# The embeddable snippet's contract version: sites link /static/v1/leadsync-forms.js; compatible fixes ship
# under v1, a change to the markup it expects gets v2 while v1 stays served.
SNIPPET_VERSION = "v1"


async def openapi(request: Request) -> JSONResponse:
    return JSONResponse(request.app.state.openapi)


async def metrics_endpoint(request: Request) -> Response:
    """Prometheus: the state gauges, computed now from the database and the broker (leadsync/status_metrics.py).

    The one policy of every operations endpoint: 403 while OPS_TOKEN is unset, 401 without the right bearer.
    """
    if (refused := require_ops_token(request)) is not None:
        return refused
    body, content_type = await run_in_threadpool(status_metrics.render, request.app.state.metrics)
    return Response(body, media_type=content_type)


class SnippetFiles(StaticFiles):
    """The snippet's files, cacheable for an hour: short enough for fixes under the same version to arrive."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        if response.status_code in (200, 304):
            response.headers["Cache-Control"] = "public, max-age=3600"
        return response


def create_app(settings: Settings | None = None) -> Starlette:
    settings = settings or get_settings()
    settings.signing_keys  # noqa: B018 -- MissingSecret now, not a 500 on the first post (`uvicorn --factory`)
    routes = [
        Route("/forms/token", token_endpoint, methods=["GET"]),
        Route("/forms/{form:str}", FormEndpoint(), methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        Route("/thank-you", thank_you, methods=["GET"]),
        Route("/newsletter/{action:str}", subscriptions.show, methods=["GET"]),
        Route("/newsletter/{action:str}", subscriptions.apply, methods=["POST"]),
    ]
    static = files("leadsync.forms") / "static" / SNIPPET_VERSION
    routes.append(Mount(f"/static/{SNIPPET_VERSION}", SnippetFiles(directory=str(static)), name="static"))
    if settings.dev_mode:
        routes.append(Route("/", demo, methods=["GET"]))
    spam_guard = SpamGuard(settings)  # rate-limit counters live as long as the app
    group_commit = GroupCommit(
        store_batch,
        enqueue_submissions,
        settings.intake_batch_max,
        max_queue=settings.intake_queue_max,
        count=spam_guard.count,
    )
    middleware = [
        # First: every rule after it sees 203.0.113.9, not ::ffff:203.0.113.9, and every answer (a preflight's,
        # a 503's) carries the security and CORS headers.
        Middleware(
            Edge,
            hsts=settings.public_base_url.startswith("https://"),
            allow_origins=settings.allowed_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Content-Type", "Idempotency-Key"],
            expose_headers=["Retry-After"],  # the snippet honours a 503's Retry-After on another site too
            max_age=600,
        ),
        Middleware(
            ShedLoad,
            group_commit=group_commit,
            max_in_flight=settings.intake_max_in_flight,
            suspect=spam_guard.suspect,
        ),  # inside CORS: a browser can read the 503 and retry
    ]
    app = Starlette(routes=routes, middleware=middleware, exception_handlers={Overloaded: overloaded})
    app.state.settings = settings
    app.state.spam_guard = spam_guard
    app.state.group_commit = group_commit
    app.state.openapi = openapi_document()
    app.state.metrics = status_metrics.web_registry(settings)
    # Everything loaded so far lives as long as the process: keep the collector from walking it again and
    # again, and let it run less often (each post makes a few hundred short-lived objects). Fewer pauses,
    # a shorter latency tail under a burst (docs/benchmarks.md).
    gc.freeze()
    gc.set_threshold(20_000, 50, 100)
    return app

"""The ASGI application: routes and middleware, nothing more.

Example:
    $ leadsync web --port 8000        # or: uvicorn --factory leadsync.forms.app:create_app
"""

from __future__ import annotations

from importlib.resources import files

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from leadsync.config import Settings, get_settings
from leadsync.forms.health import healthz, readyz
from leadsync.forms.openapi import openapi_document
from leadsync.forms.pages import demo, thank_you
from leadsync.forms.submit import submit
from leadsync.forms.tokens import token_endpoint

# The embeddable snippet's contract version: sites link /static/v1/leadsync-forms.js; compatible fixes ship
# under v1, a change to the markup it expects gets v2 while v1 stays served.
SNIPPET_VERSION = "v1"


async def openapi(request: Request) -> JSONResponse:
    return JSONResponse(request.app.state.openapi)


class SnippetFiles(StaticFiles):
    """The snippet's files, cacheable for an hour: short enough for fixes under the same version to arrive."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        if response.status_code in (200, 304):
            response.headers["Cache-Control"] = "public, max-age=3600"
        return response


def create_app(settings: Settings | None = None) -> Starlette:
    settings = settings or get_settings()
    routes = [
        Route("/forms/token", token_endpoint, methods=["GET"]),
        Route("/forms/{form:str}", submit, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/thank-you", thank_you, methods=["GET"]),
    ]
    static = files("leadsync.forms") / "static" / SNIPPET_VERSION
    routes.append(Mount(f"/static/{SNIPPET_VERSION}", SnippetFiles(directory=str(static)), name="static"))
    if settings.dev_mode:
        routes.append(Route("/", demo, methods=["GET"]))
    middleware = [
        Middleware(
            CORSMiddleware,
            allow_origins=settings.allowed_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Content-Type", "Idempotency-Key"],
            max_age=600,
        )
    ]
    app = Starlette(routes=routes, middleware=middleware)
    app.state.settings = settings
    app.state.openapi = openapi_document()
    return app

"""The ASGI application: routes and middleware, nothing more.

Example:
    $ leadsync web --port 8000        # or: uvicorn --factory leadsync.forms.app:create_app
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from leadsync.config import Settings, get_settings
from leadsync.forms.health import healthz, readyz
from leadsync.forms.openapi import openapi_document
from leadsync.forms.pages import demo, thank_you
from leadsync.forms.submit import submit


async def openapi(request: Request) -> JSONResponse:
    return JSONResponse(request.app.state.openapi)


def create_app(settings: Settings | None = None) -> Starlette:
    settings = settings or get_settings()
    routes = [
        Route("/forms/{form:str}", submit, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/thank-you", thank_you, methods=["GET"]),
    ]
    if settings.dev_mode:
        routes.append(Route("/", demo, methods=["GET"]))
    middleware = [
        Middleware(
            CORSMiddleware,
            allow_origins=settings.allowed_origins,
            allow_methods=["POST"],
            allow_headers=["Content-Type", "Idempotency-Key"],
            max_age=600,
        )
    ]
    app = Starlette(routes=routes, middleware=middleware)
    app.state.settings = settings
    app.state.openapi = openapi_document()
    return app

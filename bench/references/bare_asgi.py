"""The ceiling of the server stack: Starlette parsing the urlencoded form and answering 202, nothing else.

What bench/intake.py measures it for: the most any Starlette app under this uvicorn (2 workers, uvloop,
httptools) can answer on this machine. Run alone:

    .venv/bin/uvicorn bench.references.bare_asgi:app --workers 2 --loop uvloop --http httptools
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


async def info_packet(request: Request) -> Response:
    """Parse the form (so the body is read and decoded, as any real endpoint must) and accept it."""
    form = await request.form()
    if not form.get("email"):
        return Response(status_code=422)
    return Response(status_code=202)


app = Starlette(routes=[Route("/forms/info-packet", info_packet, methods=["POST"])])

"""Server-rendered pages: the thank-you page, the error page for plain HTML posts, the dev demo."""

from __future__ import annotations

from functools import lru_cache
from importlib.resources import files
from typing import Any
from urllib.parse import urlsplit

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse

from leadsync.forms.schemas import MESSAGES

LABELS = {
    "email": "Email",
    "first_name": "First name",
    "last_name": "Last name",
    "phone": "Phone",
    "interest": "Interest",
    "message": "Message",
    "newsletter_opt_in": "Newsletter",
    "page_url": "Page",
    "body": "Form",
    "service": "Service",
}


@lru_cache(maxsize=1)
def _environment() -> Environment:
    return Environment(loader=FileSystemLoader(str(files("leadsync.forms") / "pages")), autoescape=select_autoescape())


def render(template: str, status: int = 200, headers: dict[str, str] | None = None, **context: Any) -> HTMLResponse:
    return HTMLResponse(_environment().get_template(template).render(**context), status_code=status, headers=headers)


def render_errors(
    status: int, errors: dict[str, str], form: str | None, headers: dict[str, str] | None = None
) -> HTMLResponse:
    items = [(LABELS.get(name, name), message) for name, message in errors.items()]
    return render("errors.html", status, headers, errors=items, form=form)


def back_link(url: str | None, request: Request) -> str | None:
    """`url` if it is a page of this site or of an allowed origin, else None: never a link to anywhere else."""
    if not url:
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    origin = f"{parts.scheme}://{parts.netloc}"
    if parts.netloc == request.url.netloc or origin in request.app.state.settings.allowed_origins:
        return url
    return None


async def thank_you(request: Request) -> HTMLResponse:
    form = request.query_params.get("form", "info-packet")
    back = back_link(request.query_params.get("back"), request)
    return render("thank_you.html", form=form, message=MESSAGES.get(form, MESSAGES["info-packet"]), back=back)


async def demo(request: Request) -> HTMLResponse:
    return render("demo.html", settings=request.app.state.settings)

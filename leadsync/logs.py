"""Logging for every leadsync process: one structlog pipeline, JSON lines in production, readable in `dev`.

Every record goes through it, ours and the libraries' (Celery, uvicorn, kombu) alike, so every line gets
the same fields (`timestamp`, `level`, `logger`, `event`, and whatever is bound: `submission_id`,
`task`, `task_id`) and the same redaction: no email address and no phone-like number reaches a log.

The submission id follows a lead: the request binds it once the row is stored, `before_task_publish`
copies what is bound into the message headers, `task_prerun` binds it again in the worker (see
`worker/celery_app.py`), so the intake task and the packet email it enqueues log under the same id.

Example:
    >>> configure("console")                 # `leadsync dev`
    >>> structlog.get_logger().info("submission accepted", form="newsletter")
    >>> redact("mail ann@example.org or call +1 (555) 010-2030")
    'mail [email] or call [phone]'
"""

from __future__ import annotations

import logging
import logging.config
import re
import sys
import uuid
from collections.abc import Mapping, MutableMapping, Sequence
from contextvars import ContextVar
from typing import Any, Literal

import structlog
from structlog.typing import EventDict, Processor

LogFormat = Literal["json", "console"]

# An address, also URL-encoded (`ann%40example.org` in a query string).
EMAIL = re.compile(r"[\w.+-]+(?:@|%40)[\w-]+(?:\.[\w-]+)+", re.IGNORECASE)
# Something written like a phone number: a leading +, or digit groups joined by spaces, dots, dashes or
# parentheses. Not inside a word (hex ids, UUIDs) and not a date, a time, an address or a float. Bare
# digit runs without a + are kept: they are ids, ports and epoch times far more often than phones.
PHONE = re.compile(r"(?<![\w.:/+-])(?:\+\(?\d|\(\d|\d)[\d ().-]{4,}\d(?![\w:/]|[.-]\d)")
NOT_A_PHONE = re.compile(r"\d{4}-\d\d-\d\d.*|\d{1,3}(?:\.\d{1,3}){3}|\d+\.\d+|\d+")
MIN_PHONE_DIGITS, MAX_PHONE_DIGITS = 7, 15

_HANDLER_MARK = "_leadsync_handler"


def _phone(match: re.Match[str]) -> str:
    text = match.group(0)
    digits = sum(char.isdigit() for char in text)
    if not MIN_PHONE_DIGITS <= digits <= MAX_PHONE_DIGITS:
        return text
    if not text.startswith("+") and NOT_A_PHONE.fullmatch(text.strip()):
        return text
    return "[phone]"


def redact(text: str) -> str:
    """The text with email addresses and phone-like numbers replaced."""
    if "@" in text or "%40" in text:
        text = EMAIL.sub("[email]", text)
    return PHONE.sub(_phone, text)


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {key: _redact_value(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set):
        return [_redact_value(item) for item in value]
    return value


def redact_processor(_: Any, __: str, event_dict: EventDict) -> EventDict:
    """structlog processor: every value of the event, after exceptions were rendered to text."""
    return {key: value if key == "timestamp" else _redact_value(value) for key, value in event_dict.items()}


class RedactingFilter(logging.Filter):
    """For stdlib handlers that are not ours (a library's own): the message redacted before it is formatted."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, dict):  # structlog's own event: redacted by `redact_processor`
            return True
        try:
            message = record.getMessage()
        except Exception:  # a broken %-format: leave it to the formatter to report
            return True
        record.msg, record.args = redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


def _rename_logger(_: Any, __: str, event_dict: EventDict) -> EventDict:
    record = event_dict.get("_record")
    if record is not None and "logger" not in event_dict:
        event_dict["logger"] = record.name
    return event_dict


class _Request:
    """The HTTP request a task serves: its headers, and its log id once a line needed one."""

    __slots__ = ("headers", "id")

    def __init__(self, headers: Sequence[tuple[bytes, bytes]]) -> None:
        self.headers = headers
        self.id: str | None = None


# Set by forms/edge.py for every request; uvicorn runs each request in a task of its own, so it is that
# request's alone.
_REQUEST: ContextVar[_Request | None] = ContextVar("leadsync_request", default=None)


def begin_request(headers: Sequence[tuple[bytes, bytes]]) -> None:
    """Every line logged while this request is served carries `request_id`: the proxy's X-Request-ID when it
    sent a printable one (nginx's $request_id, deploy/nginx), else one made for the request. Made only when a
    line is written: most posts log none of their own (one line a commit), and a uuid4 a post would cost ~2 µs."""
    _REQUEST.set(_Request(headers))


def _add_request_id(_: Any, __: str, event_dict: EventDict) -> EventDict:
    request = _REQUEST.get()
    if request is not None and "request_id" not in event_dict:
        if request.id is None:
            sent = next((value for name, value in request.headers if name == b"x-request-id"), b"")
            text = sent.decode("latin-1")[:64]
            request.id = text if text and text.isprintable() else uuid.uuid4().hex
        event_dict["request_id"] = request.id
    return event_dict


def _shared(fmt: LogFormat) -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        _add_request_id,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.PositionalArgumentsFormatter(),
        structlog.processors.TimeStamper(fmt="iso", utc=fmt == "json"),
    ]


def formatter(fmt: LogFormat = "json") -> structlog.stdlib.ProcessorFormatter:
    """The one formatter: structlog's events and stdlib records rendered alike, redacted last."""
    renderer: Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=(sys.__stderr__ or sys.stderr).isatty())
    )
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*_shared(fmt), _rename_logger],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,  # the traceback as text, so it is redacted too
            redact_processor,
            renderer,
        ],
    )


def configure(fmt: LogFormat = "json", level: str | int = "INFO") -> None:
    """Route structlog and the stdlib root logger through one handler on stderr. Safe to call again.

    The handler writes to the process's real stderr (`sys.__stderr__`): Celery swaps `sys.stderr` for a
    proxy that logs, which would loop back here.
    """
    structlog.configure(
        processors=[*_shared(fmt), structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.__stderr__ or sys.stderr)
    handler.setFormatter(formatter(fmt))
    handler.addFilter(RedactingFilter())
    setattr(handler, _HANDLER_MARK, True)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    logging.captureWarnings(True)  # Python warnings become log lines too, through the same redaction
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)  # a line per plugin, every run
    # Libraries that bring their own handlers and do not propagate: send them through ours.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "celery.task", "celery.redirected"):
        library = logging.getLogger(name)
        library.handlers.clear()
        library.propagate = True


def uvicorn_log_config(fmt: LogFormat, level: str) -> dict[str, Any]:
    """A dictConfig for uvicorn: its worker processes (`--workers N`) configure logging from it, not from us."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"leadsync": {"()": "leadsync.logs.configured_formatter", "fmt": fmt, "level": level}},
        "filters": {"redact": {"()": "leadsync.logs.RedactingFilter"}},
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "formatter": "leadsync",
                "filters": ["redact"],
                "stream": "ext://sys.stderr",
            }
        },
        "loggers": {
            "uvicorn": {"handlers": [], "propagate": True},
            "uvicorn.error": {"handlers": [], "propagate": True},
            "uvicorn.access": {"handlers": [], "propagate": True},
        },
        "root": {"handlers": ["default"], "level": level.upper()},
    }


def configured_formatter(fmt: LogFormat = "json", level: str = "INFO") -> structlog.stdlib.ProcessorFormatter:
    """dictConfig factory: configures structlog in this (uvicorn worker) process, returns the formatter."""
    structlog.configure(
        processors=[*_shared(fmt), structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    return formatter(fmt)


# ------------------------------------------------------------------ the submission id across processes

CONTEXT_HEADERS = ("submission_id",)


def bind(**values: Any) -> None:
    """Bind values to every log line of this request or task (structlog contextvars)."""
    structlog.contextvars.bind_contextvars(**{k: v for k, v in values.items() if v is not None})


def unbind(*names: str) -> None:
    structlog.contextvars.unbind_contextvars(*names)


def clear() -> None:
    structlog.contextvars.clear_contextvars()


def outgoing_headers(headers: MutableMapping[str, Any]) -> None:
    """Copy what is bound (the submission id) into a task message's headers."""
    bound = structlog.contextvars.get_contextvars()
    for name in CONTEXT_HEADERS:
        if bound.get(name) and not headers.get(name):
            headers[name] = bound[name]

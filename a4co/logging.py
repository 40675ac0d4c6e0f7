"""Structured logs: one JSON object per line (LOG_FORMAT=json), with the saga's ids on every line.

What a line carries (keys are omitted when unknown, never written empty):
    time      ISO 8601, UTC, milliseconds          level    INFO, WARNING, ...
    logger    the logger's name                     message  the formatted message, unchanged
    process   what kind of process wrote it: web, worker, beat, consumers, test, or
              command:<name> for other manage.py commands (A4CO_PROCESS_KIND overrides it)
    pid       the process id
    orderId, sagaId, eventId, consumer, subject     the correlation ids (see below)
    exception the formatted traceback, when the record has one
    plus `path`, `method` and `statusCode` for django.request's records.

Where the ids come from, first match wins:
1. `extra={"orderId": ...}` on the log call;
2. the `log_context(...)` around the code that logs (a contextvar, so it follows the thread or
   the asyncio task: the consumer runner sets it around each message, with orderId, eventId,
   consumer and subject);
3. the URL of the request being logged by django.request (`order_id` in the route);
4. `orderId=...`, `sagaId=...`, `eventId=...`, `consumer=...` written in the message itself,
   which is how the services already log (the celery sweeps and the relay have no context to
   set, and their lines still come out with the ids).

`ContextFilter` must be attached to the handlers (a filter on a logger would only see that
logger's own records); the plain format ignores the fields and stays as it was.
"""
from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import json
import logging
import os
import re
import sys
import types
from collections.abc import Iterator, Mapping

# Python keyword -> JSON key of the A4CO contract.
CONTEXT_FIELDS = {"order_id": "orderId", "saga_id": "sagaId", "event_id": "eventId",
                  "consumer": "consumer", "subject": "subject"}
_IDS_IN_TEXT = re.compile(r"\b(orderId|sagaId|eventId|consumer)=([^\s,;]+)")

# Immutable mappings only: log_context() replaces the value, never changes it in place.
_context: contextvars.ContextVar[Mapping[str, str]] = contextvars.ContextVar(
    "a4co_log_context", default=types.MappingProxyType({}))


@contextlib.contextmanager
def log_context(**fields: object) -> Iterator[None]:
    """Add correlation ids (order_id, saga_id, event_id, consumer, subject) to every line logged
    inside the block, in this thread or asyncio task. Nested blocks add to (and may override)
    the outer one; empty values are ignored. Unknown keywords raise TypeError."""
    unknown = set(fields) - set(CONTEXT_FIELDS)
    if unknown:
        raise TypeError(f"log_context() got unknown fields: {', '.join(sorted(unknown))}")
    merged = dict(_context.get())
    merged.update({CONTEXT_FIELDS[key]: str(value) for key, value in fields.items() if value not in (None, "")})
    token = _context.set(types.MappingProxyType(merged))
    try:
        yield
    finally:
        _context.reset(token)


def current_log_context() -> dict[str, str]:
    """The ids log_context() has set here (JSON keys), for tests and for handing to threads."""
    return dict(_context.get())


def process_kind(argv: list[str] | None = None) -> str:
    """What this process is, from A4CO_PROCESS_KIND or its command line (see module docstring)."""
    explicit = os.environ.get("A4CO_PROCESS_KIND", "").strip()
    if explicit:
        return explicit
    argv = sys.argv if argv is None else argv
    if not argv or argv[0] in ("", "-c", "-m"):
        return "python"
    program = os.path.basename(os.path.dirname(argv[0]) if argv[0].endswith("__main__.py") else argv[0])
    args = argv[1:]
    if program.startswith("gunicorn"):
        return "web"
    if program.startswith("celery"):
        for kind in ("worker", "beat"):
            if kind in args:
                return kind
        return "celery"
    if program in ("pytest", "py.test") or "pytest" in program:
        return "test"
    if program == "manage.py" and args:
        return "consumers" if args[0] == "run_consumers" else f"command:{args[0]}"
    return program or "python"


class ContextFilter(logging.Filter):
    """Copies the log_context() ids onto each record (without overriding `extra=` ones)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _context.get().items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line; see the module docstring for the keys."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.process_kind = process_kind()

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        line: dict[str, object] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds")
                    .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": message,
            "process": self.process_kind,
            "pid": record.process,
        }
        for key in CONTEXT_FIELDS.values():
            value = getattr(record, key, None)
            if value not in (None, ""):
                line[key] = str(value)
        request = getattr(record, "request", None)
        if request is not None:
            self._request_fields(line, request, record)
        for key, value in _IDS_IN_TEXT.findall(message):
            line.setdefault(key, value)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False, default=str)

    @staticmethod
    def _request_fields(line: dict[str, object], request, record: logging.LogRecord) -> None:
        # django.request passes the HttpRequest (and status_code) in `extra`.
        line["method"] = getattr(request, "method", None)
        line["path"] = getattr(request, "path", None)
        if hasattr(record, "status_code"):
            line["statusCode"] = record.status_code
        match = getattr(request, "resolver_match", None)
        order_id = match.kwargs.get("order_id") if match is not None else None
        if order_id:
            line.setdefault("orderId", str(order_id))

"""Structured logging: one JSON object a line in production, readable lines in a terminal.

A context (tenant_id, job_id, task_id, request_id) lives in a contextvar, so whatever is bound for the
current request or task is added to every record logged while it runs, from any module, without passing
a logger around. The API binds request_id/tenant_id, the worker signals bind task_id/job_id.

Standard library only: `logging` plus a filter and two formatters.
"""

from __future__ import annotations

import json as _json
import logging
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, TextIO

# The fields every log line may carry, in the order a reader wants them.
CONTEXT_FIELDS = ("request_id", "tenant_id", "job_id", "task_id")

# Always replaced, never mutated: a copy made in one task or request can never leak into another.
_context: ContextVar[Mapping[str, Any]] = ContextVar("voiceappoint_log_context", default=MappingProxyType({}))

# Attributes every LogRecord has; anything else on a record came from `extra=` and belongs in the output.
_RECORD_ATTRIBUTES = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}


def bind(**fields: Any) -> None:
    """Add fields to the context of the current task/request (None values are ignored)."""
    current = dict(_context.get())
    current.update({name: value for name, value in fields.items() if value is not None})
    _context.set(current)


def clear() -> None:
    _context.set({})


def get_context() -> dict[str, Any]:
    return dict(_context.get())


@contextmanager
def bound(**fields: Any) -> Iterator[None]:
    """Bind fields for the duration of a block, then restore what was there before."""
    token = _context.set({**_context.get(), **{k: v for k, v in fields.items() if v is not None}})
    try:
        yield
    finally:
        _context.reset(token)


class ContextFilter(logging.Filter):
    """Copies the bound context onto each record; installed on the handler so it sees every logger."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in _context.get().items():
            if not hasattr(record, name):
                setattr(record, name, value)
        return True


# billiard.util.LOGGER_NAME (the name multiprocessing uses too).
POOL_LOGGER = "multiprocessing"

# Extras that repeat the message in another form (uvicorn's ANSI-coloured copy).
_REDUNDANT_EXTRAS = frozenset({"color_message"})


def _extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    return {
        name: value
        for name, value in record.__dict__.items()
        if name not in _RECORD_ATTRIBUTES and name not in _REDUNDANT_EXTRAS and not name.startswith("_")
    }


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        extra = _extra_fields(record)
        for name in CONTEXT_FIELDS:
            if name in extra:
                entry[name] = extra.pop(name)
        entry.update(extra)
        entry["process"] = record.process
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        return _json.dumps(entry, default=str)


class ConsoleFormatter(logging.Formatter):
    """`time LEVEL logger: message  key=value ...` for a developer's terminal."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    # Celery attaches its message arguments as `data`; they already are in the message text.
    HIDDEN = frozenset({"data"})

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extra = {name: value for name, value in _extra_fields(record).items() if name not in self.HIDDEN}
        if not extra:
            return line
        ordered = [name for name in CONTEXT_FIELDS if name in extra] + sorted(
            name for name in extra if name not in CONTEXT_FIELDS
        )
        fields = " ".join(f"{name}={extra[name]}" for name in ordered)
        # Keep the fields on the first line, before any traceback.
        first, newline, rest = line.partition("\n")
        return f"{first}  {fields}{newline}{rest}"


class CurrentStderrHandler(logging.StreamHandler):
    """Writes to sys.stderr as it is when a record comes, not as it was when logging was configured: a test
    runner swaps sys.stderr and closes the one it swapped out, and a record logged later (by a library's
    exit handler) met a closed file."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass


def configure(level: str | int | None = None, json: bool | None = None, stream: TextIO | None = None) -> None:
    """Send every log record to one handler on the root logger.

    Defaults come from settings: VOICEAPPOINT_LOG_LEVEL, and JSON when VOICEAPPOINT_ENV=production.
    Calling it again replaces the handler (Celery and uvicorn may both ask), it never stacks them.
    """
    if level is None or json is None:
        from core.config import get_settings

        settings = get_settings()
        level = settings.log_level if level is None else level
        json = settings.is_production if json is None else json
    if isinstance(level, str):
        level = logging.getLevelName(level.upper())

    handler = logging.StreamHandler(stream) if stream is not None else CurrentStderrHandler()
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter() if json else ConsoleFormatter())

    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # uvicorn installs handlers of its own that would print unstructured lines past ours.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        server_logger = logging.getLogger(name)
        server_logger.handlers.clear()
        server_logger.propagate = True
    # The worker's pool (billiard) logs to "multiprocessing", which it makes not propagate: without a handler of
    # its own, its ERROR `Process 'ForkPoolWorker-1' pid:… exited with 'signal 9 (SIGKILL)'` (an OOM kill, a
    # crash) reached stderr through Python's last-resort handler, as a bare line in the JSON stream.
    pool_logger = logging.getLogger(POOL_LOGGER)
    pool_logger.handlers.clear()
    pool_logger.addHandler(handler)
    pool_logger.propagate = False
    # Its INFO is a line per pool process started ("child process … calling self.run()"): noise but in DEBUG.
    pool_logger.setLevel(level if level <= logging.DEBUG else max(level, logging.WARNING))
    logging.captureWarnings(True)

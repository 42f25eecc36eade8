"""Structured logging on the standard library: an event name plus key=value fields.

``log_event(logger, "database_identity", instance_id=..., url=...)`` renders as
``... INFO autopack.api database_identity instance_id=... url=...`` in text mode, or as
one JSON object per line with ``AUTOPACK_LOG_FORMAT=json``. Logs go to stderr so that
stdout stays clean for ``--json`` output. Every line passes :mod:`autopack.redact` on its
way out: a field holding an echoed ``x-api-key`` header is logged as ``[REDACTED]``.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from autopack import redact

_FIELDS = "autopack_fields"


def log_event(logger: logging.Logger, event: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log ``event`` with structured ``fields`` (kept apart from the message for JSON output)."""
    logger.log(level, event, extra={_FIELDS: fields})


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, _FIELDS, {})
        stamp = datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        parts = [stamp[:-4] + "Z", record.levelname, record.name, record.getMessage()]
        parts += [f"{key}={_text(value)}" for key, value in fields.items()]
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return redact.text(line)


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "event": record.getMessage(),
            **getattr(record, _FIELDS, {}),
        }
        if record.exc_info:
            body["exception"] = self.formatException(record.exc_info)
        return json.dumps(redact.data(json.loads(json.dumps(body, default=str))))


def _text(value: Any) -> str:
    """A field's value as one token of one line: quoted when it has a space, or a line
    break, tab or escape sequence (a worker's stop_reason must not forge log lines or
    drive the terminal that reads them)."""
    text = str(value)
    return json.dumps(text) if (" " in text or not text or not text.isprintable()) else text


class _Redacting(logging.Filter):
    """Redacts the records the web server's own handlers write: uvicorn's access line
    showed a request's query string (``?token=…``) and its ``Exception in ASGI
    application`` the unexpected error's message, unredacted next to Autopack's redacted
    ``request_failed``. Their formats stay uvicorn's: the message, each argument and the
    traceback are redacted in place."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact.text(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(_redacted_arg(arg) for arg in record.args)
        elif isinstance(record.args, dict):
            record.args = {key: _redacted_arg(arg) for key, arg in record.args.items()}
        if record.exc_info and not record.exc_text:
            record.exc_text = redact.text(logging.Formatter().formatException(record.exc_info))
        if record.stack_info:
            record.stack_info = redact.text(record.stack_info)
        return True


def _redacted_arg(arg: Any) -> Any:
    return redact.text(arg) if isinstance(arg, str) else arg


_SERVER_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "")
"""Loggers whose handlers Autopack did not install: the web server's, and the root's."""


def configure_logging(level: str = "INFO", fmt: str = "text") -> None:
    """Install the Autopack handler on the ``autopack`` logger (idempotent), and redaction
    on the handlers the web server installed (:class:`_Redacting`)."""
    for name in _SERVER_LOGGERS:
        for other in logging.getLogger(name).handlers:
            if not any(isinstance(f, _Redacting) for f in other.filters):
                other.addFilter(_Redacting())
    logger = logging.getLogger("autopack")
    logger.setLevel(level.upper())
    for handler in list(logger.handlers):
        if getattr(handler, "_autopack", False):
            logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if fmt == "json" else _TextFormatter())
    handler._autopack = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.propagate = False

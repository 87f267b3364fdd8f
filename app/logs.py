"""Logging: one format (JSON lines or text) for the app and gunicorn's error and access logs.

Every line written while a request is handled carries that request's id (``request_id``),
the one echoed in its ``X-Request-ID`` response header (:mod:`app.api.request_id`);
gunicorn's access line gets it from that response header. ``gunicorn.conf.py`` installs
:func:`logconfig_dict` as gunicorn's ``logconfig_dict``, so the master, the worker, the
app's loggers and the access log all write through the same handler.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from typing import Literal

# gunicorn access-log atoms copied into the access record as fields of their own, with their type
_ACCESS_FIELDS = {
    "h": ("remote_addr", str),
    "m": ("method", str),
    "U": ("path", str),
    "q": ("query", str),
    "s": ("status", int),
    "B": ("bytes", int),
    "L": ("duration_s", float),
    "a": ("user_agent", str),
}
_REQUEST_ID_ATOM = "{x-request-id}o"  # the response header X-Request-ID


def current_request_id() -> str | None:
    """The id of the request this code runs for, or None outside a request."""
    flask = sys.modules.get("flask")  # no flask imported (gunicorn's master): no request either
    if flask is None or not flask.has_request_context():
        return None
    return flask.g.get("request_id")


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` to records written during a request (and to gunicorn's access lines)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "gunicorn.access" and isinstance(record.args, Mapping):
            atoms = record.args
            request_id = atoms.get(_REQUEST_ID_ATOM)
            if request_id and request_id != "-":
                record.request_id = request_id
            for atom, (name, kind) in _ACCESS_FIELDS.items():
                value = atoms.get(atom)
                if value not in (None, "", "-"):
                    try:
                        setattr(record, name, kind(value))
                    except ValueError:
                        setattr(record, name, str(value))
        elif getattr(record, "request_id", None) is None:
            request_id = current_request_id()
            if request_id is not None:
                record.request_id = request_id
        return True


class TextFormatter(logging.Formatter):
    """``LOG_FORMAT=text``: one plain line, the request id in brackets (``-`` outside a request)."""

    def __init__(self) -> None:
        super().__init__(
            "%(asctime)s [%(process)d] %(levelname)s %(name)s [%(request_id)s] %(message)s",
            defaults={"request_id": "-"},
        )


def logconfig_dict(log_format: Literal["json", "text"], level: str = "INFO") -> dict:
    """A :func:`logging.config.dictConfig` for gunicorn's ``logconfig_dict`` (master and worker)."""
    if log_format == "json":
        formatter = {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": ["levelname", "name", "process", "message"],
            "rename_fields": {"levelname": "level", "name": "logger"},
            "timestamp": "time",  # ISO 8601, UTC
        }
    else:
        formatter = {"()": TextFormatter}
    handler = ["stdout"]
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": RequestIdFilter}},
        "formatters": {"default": formatter},
        "handlers": {
            "stdout": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stdout",
                "formatter": "default",
                "filters": ["request_id"],
            }
        },
        "root": {"level": level, "handlers": handler},
        "loggers": {
            "gunicorn.error": {"level": level, "handlers": handler, "propagate": False, "qualname": "gunicorn.error"},
            "gunicorn.access": {
                "level": "INFO",
                "handlers": handler,
                "propagate": False,
                "qualname": "gunicorn.access",
            },
        },
    }

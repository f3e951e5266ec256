"""Log formats for long-running commands: the human one and one JSON object per line.

``--log-format json`` (``meridian server start``, ``meridian agent start``) gives log shippers
one object per record with stable keys: ``ts`` (RFC 3339, UTC, milliseconds), ``level``,
``logger``, ``message``, and ``exc`` when an exception is attached. Extra attributes passed
with ``logger.info(..., extra={...})`` that are JSON-friendly are added under their own names.
"""

from __future__ import annotations

import datetime as dt
import json
import logging

HUMAN_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
FORMATS = ("text", "json")
# Attributes every LogRecord has; anything else was passed in ``extra``.
_STANDARD = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys() | {"message", "asctime"}
)


class JsonFormatter(logging.Formatter):
    """One JSON object per line; never raises on an odd message or extra value."""

    def format(self, record: logging.LogRecord) -> str:
        at = dt.datetime.fromtimestamp(record.created, dt.UTC)
        entry: dict[str, object] = {
            "ts": at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_") and key not in entry:
                entry[key] = value if isinstance(value, str | int | float | bool) else repr(value)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=repr)


def formatter(name: str) -> logging.Formatter:
    """The formatter for ``--log-format NAME`` (``text`` or ``json``)."""
    if name == "json":
        return JsonFormatter()
    if name == "text":
        return logging.Formatter(HUMAN_FORMAT)
    raise ValueError(f"log format must be one of {', '.join(FORMATS)} (got {name!r})")


def use_format(name: str, logger: logging.Logger | None = None) -> None:
    """Give every handler of ``logger`` (default: the root logger) the ``name`` format."""
    chosen = formatter(name)
    for handler in (logger or logging.getLogger()).handlers:
        handler.setFormatter(chosen)

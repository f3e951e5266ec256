"""``meridian.get_logger()``: log records that reach a step's logs at their level.

Step logs are the lines a step writes to stdout (level INFO) and stderr (level ERROR). A record
of a logger from :func:`get_logger` is written inside a step as ONE stderr line::

    ::meridian-log::{"level": "warning", "logger": "etl", "message": "...", "exc": "..."}

and the agent (``agent.logbatch``, shared by every provider) turns it back into log lines whose
stream is the level name (``debug``, ``info``, ``warning``, ``error``, ``critical``), so that
``meridian runs logs --level warning`` keeps warnings and errors and drops debug and info.
A line is bounded below the providers' line limit (16 KiB) so that it always arrives whole; a
line that is not a well-formed record stays a plain stderr line. An agent that does not know
the marker shows the raw line on stderr: nothing is lost.

In a flow body (and anywhere outside a step) these loggers are ordinary loggers under
``meridian.run``: records go to the handlers of the process (the runner's console), and
nothing is sent to the control plane.
"""

from __future__ import annotations

import json
import logging
import sys
import threading

from meridian.core import runcontext

LOG_MARKER = "::meridian-log::"
ROOT_LOGGER = "meridian.run"
# Below providers.shared.filetail.MAX_LOG_LINE_BYTES (16 KiB), which splits longer lines.
MAX_RECORD_LINE_BYTES = 15 * 1024
MAX_LOGGER_CHARS = 200
LEVEL_NAMES = ("debug", "info", "warning", "error", "critical")
_TRUNCATED = "...[truncated]"
_LOCK = threading.Lock()


def level_name(levelno: int) -> str:
    """The level a record is shipped at: custom levels round up to the next standard one."""
    for name, at in zip(
        LEVEL_NAMES,
        (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR),
        strict=False,
    ):
        if levelno <= at:
            return name
    return "critical"


def encode_record(level: str, logger: str, message: str, exc: str = "") -> str:
    """One marker line (without newline) of at most ``MAX_RECORD_LINE_BYTES`` bytes: the
    traceback keeps its end, the message its start, when they must be cut."""
    logger = logger[:MAX_LOGGER_CHARS]
    doc: dict[str, str] = {"level": level, "logger": logger, "message": message}
    if exc:
        doc["exc"] = exc
    while True:
        line = LOG_MARKER + json.dumps(doc, ensure_ascii=False)
        excess = len(line.encode("utf-8", errors="replace")) - MAX_RECORD_LINE_BYTES
        if excess <= 0:
            return line
        # JSON escapes can take up to 6 bytes a character: cut at least the excess (in
        # characters), then measure again; each round shrinks a field, so this ends.
        field = "exc" if len(doc.get("exc", "")) > len(doc["message"]) else "message"
        text = doc[field]
        keep = max(0, len(text) - excess - len(_TRUNCATED))
        if field == "exc":
            doc[field] = _TRUNCATED + text[len(text) - keep :] if keep else ""
        else:
            doc[field] = text[:keep] + _TRUNCATED if keep else _TRUNCATED


def decode_record(text: str) -> tuple[str, list[str]] | None:
    """``(level, lines)`` of a marker line, or None when ``text`` is not a well-formed one.

    The first line is ``"<logger>: <message>"`` (just the message for the default logger);
    the message's further lines and the traceback's lines follow at the same level.
    """
    if not text.startswith(LOG_MARKER):
        return None
    try:
        doc = json.loads(text[len(LOG_MARKER) :])
    except ValueError:
        return None
    if not isinstance(doc, dict):
        return None
    level, logger = doc.get("level"), doc.get("logger", "")
    message, exc = doc.get("message"), doc.get("exc", "")
    if level not in LEVEL_NAMES or not isinstance(message, str):
        return None
    if not isinstance(logger, str) or not isinstance(exc, str):
        return None
    short = logger[len(ROOT_LOGGER) + 1 :] if logger.startswith(ROOT_LOGGER + ".") else logger
    first = message if short in ("", ROOT_LOGGER) else f"{short}: {message}"
    lines = first.splitlines() or [""]
    if exc:
        lines.extend(exc.rstrip("\n").splitlines())
    return level, lines


class StepLogHandler(logging.Handler):
    """Writes each record as a marker line to ``sys.stderr`` while a step runs.

    ``sys.stderr`` is looked up per record: a warm worker points it at each step's own log file
    in turn. Outside a step the record propagates like any other; this handler only stands in
    for logging's last resort (warnings to stderr), which its mere presence would switch off.
    """

    def emit(self, record: logging.LogRecord) -> None:
        if runcontext.current_step() is None:
            _last_resort(record)
            return
        try:
            exc = record.exc_text or ""
            if record.exc_info:
                exc = logging.Formatter().formatException(record.exc_info)
            if record.stack_info:
                exc = f"{exc}\n{record.stack_info}" if exc else record.stack_info
            line = encode_record(level_name(record.levelno), record.name, record.getMessage(), exc)
            stream = sys.stderr
            stream.write(line + "\n")
            stream.flush()
        except Exception:
            self.handleError(record)


def _last_resort(record: logging.LogRecord) -> None:
    logger = logging.getLogger(ROOT_LOGGER)
    while logger.propagate and logger.parent is not None:
        logger = logger.parent
        if logger.handlers:
            return  # the process has handlers: they got the record
    fallback = logging.lastResort
    if fallback is not None and record.levelno >= fallback.level:
        fallback.handle(record)


class _RunLogger(logging.Logger):
    """``meridian.run``, whose level and propagation depend on whether a step runs.

    In a step: every level from DEBUG up is enabled (unless the step set a level) and nothing
    propagates, so the marker line is the record's only copy (the process's handlers, or
    logging's last-resort handler, would print it again, unmarked). Elsewhere: an ordinary
    logger without a level of its own, whose records propagate to the process's handlers.
    """

    _own_level = logging.NOTSET
    _own_propagate = True

    @property  # type: ignore[override]
    def level(self) -> int:
        if self._own_level == logging.NOTSET and runcontext.current_step() is not None:
            return logging.DEBUG
        return self._own_level

    @level.setter
    def level(self, value: int) -> None:
        self._own_level = value

    @property  # type: ignore[override]
    def propagate(self) -> bool:
        return self._own_propagate and runcontext.current_step() is None

    @propagate.setter
    def propagate(self, value: bool) -> None:
        self._own_propagate = value


_HANDLER = StepLogHandler()


def _clear_level_caches() -> None:
    # Loggers cache isEnabledFor answers; the answers of meridian.run.* change with the step.
    logging.Logger.manager._clear_cache()  # type: ignore[attr-defined]


def _root() -> logging.Logger:
    root = logging.getLogger(ROOT_LOGGER)
    if not isinstance(root, _RunLogger):
        with _LOCK:
            if not isinstance(root, _RunLogger):
                own = root.__dict__
                level, propagate = own.pop("level", 0), own.pop("propagate", True)
                root.__class__ = _RunLogger
                root.level, root.propagate = level, propagate
                root.addHandler(_HANDLER)
                runcontext.on_step_change(_clear_level_caches)
                _clear_level_caches()
    return root


def reset() -> None:
    """Undo what a step changed on ``meridian.run`` and the loggers below it (levels, handlers,
    filters, propagation): a warm worker calls this after each step, so none of it leaks."""
    root = _root()
    below = [
        logger
        for name, logger in list(logging.Logger.manager.loggerDict.items())
        if isinstance(logger, logging.Logger) and name.startswith(ROOT_LOGGER + ".")
    ]
    for logger in [root, *below]:
        logger.handlers[:] = [_HANDLER] if logger is root else []
        logger.filters.clear()
        logger.disabled = False
        logger.propagate = True
        logger.setLevel(logging.NOTSET)


def get_logger(name: str | None = None) -> logging.Logger:
    """A logger whose records reach the step's logs at their level (see the module doc).

    ``name`` gives the logger ``meridian.run.<name>``, shown as ``<name>: <message>``. Inside
    a step every level from DEBUG up is shipped (choose when reading: ``runs logs --level``);
    elsewhere records go to the process's own handlers at their usual threshold.
    """
    root = _root()
    if name is None:
        return root
    if not isinstance(name, str) or not name or len(name) > MAX_LOGGER_CHARS:
        raise ValueError(f"a logger name must be a non-empty string of at most "
                         f"{MAX_LOGGER_CHARS} characters")  # fmt: skip
    return logging.getLogger(f"{ROOT_LOGGER}.{name}")

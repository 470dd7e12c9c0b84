"""One log format for every process of the set: JSON lines.

Every line is one object ``{"ts", "level", "event", "pid", ...fields}``:
``ts`` is ISO-8601 UTC with milliseconds and a ``Z`` (``2026-12-04T21:12:02.941Z``),
``level`` one of ``debug``/``info``/``warning``/``error``, ``event`` a
snake_case name a person can grep and an alert can match on, the rest the
event's fields. vcproxy (supervisor, workers, demo upstream) and the daemons
(vcrypto-host, vcrypto-engine-backend) all write through ``JsonLog``; vcproxy
imports this module (vcrypto never imports vcproxy). Library code that logs
through the stdlib ``logging`` reaches the same stream by
``JsonLogHandler``: ``event(logger, level, name, **fields)`` logs an event
with fields; a plain ``logger.info("text %s", x)`` becomes
``{"event": "log", "logger": ..., "msg": "text ..."}``.

Why file targets are written with ``os.write`` on an ``O_APPEND`` descriptor:
one ``write(2)`` per line, so lines of several processes sharing one file
never interleave (appends are atomic for the sizes we write), and no
userspace buffer sits between a line and the file. It also makes
``reopen()`` safe from a signal handler: the new file is opened and
``dup2``-ed onto the same descriptor number, so a write in progress lands
whole in either the old or the new file, never nowhere (logrotate: rename,
then SIGUSR1).
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import IO, Any

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}
_STDLIB_LEVEL = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
                 "error": logging.ERROR}


def _level_name(levelno: int) -> str:
    if levelno >= logging.ERROR:
        return "error"
    if levelno >= logging.WARNING:
        return "warning"
    if levelno >= logging.INFO:
        return "info"
    return "debug"


# (second, "YYYY-MM-DDTHH:MM:SS") of the last call: the date part is formatted
# once a second, not per line (the access log writes one line per request).
# One tuple, replaced whole, so threads never see half an update.
_ts_cache: tuple[int, str] = (-1, "")


def iso_ts(t: float | None = None) -> str:
    """``t`` (seconds since the epoch; now if None) as ``YYYY-MM-DDTHH:MM:SS.mmmZ``."""
    global _ts_cache
    if t is None:
        t = time.time()
    sec = int(t)
    cached_sec, prefix = _ts_cache
    if sec != cached_sec:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        _ts_cache = (sec, prefix)
    return f"{prefix}.{int((t - sec) * 1000):03d}Z"


def _open_append(path: str) -> int:
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)


class JsonLog:
    """One log stream: ``target`` is ``"stdout"``, ``"stderr"``, a file path, or
    None (disabled); lines below ``level`` are dropped."""

    def __init__(self, target: str | None, level: str = "info") -> None:
        if level not in LEVELS:
            raise ValueError(f"log level {level!r}: expected one of {', '.join(LEVELS)}")
        self.target = target
        self.level = level
        self._threshold = LEVELS[level]
        self._stream: IO[str] | None = None
        self._fd = -1
        if target == "stdout":
            self._stream = sys.stdout
        elif target == "stderr":
            self._stream = sys.stderr
        elif target is not None:
            self._fd = _open_append(target)
        self._on = target is not None
        self._pid = os.getpid()

    @property
    def is_file(self) -> bool:
        return self._fd >= 0

    def enabled(self, level: str = "info") -> bool:
        return self._on and LEVELS[level] >= self._threshold

    def write(self, record: dict[str, Any]) -> None:
        """One line as it is (the caller sets ``ts``: the access log's fields are fixed)."""
        if not self._on:
            return
        line = json.dumps(record, separators=(",", ":"), default=str) + "\n"
        try:
            if self._fd >= 0:
                data = line.encode()
                while data:  # a regular file takes it whole; a pipe or a full disk may not
                    data = data[os.write(self._fd, data):]
            else:
                self._stream.write(line)
                self._stream.flush()
        except (OSError, ValueError):
            pass  # a closed or full log must never take a connection or a daemon down

    def event(self, level: str, event: str, **fields: Any) -> None:
        if not self.enabled(level):
            return
        record = {"ts": iso_ts(), "level": level, "event": event, "pid": self._pid}
        record.update(fields)
        self.write(record)

    def info(self, event: str, **fields: Any) -> None:
        self.event("info", event, **fields)

    def warning(self, event: str, **fields: Any) -> None:
        self.event("warning", event, **fields)

    def error(self, event: str, **fields: Any) -> None:
        self.event("error", event, **fields)

    def debug(self, event: str, **fields: Any) -> None:
        self.event("debug", event, **fields)

    def reopen(self) -> bool:
        """Open the file target again by name (after logrotate renamed it);
        returns whether there was a file to reopen. Safe in a signal handler
        (see the module docstring). Raises OSError if the path cannot be opened
        (the old file stays in use)."""
        if self._fd < 0:
            return False
        new = _open_append(self.target)
        try:
            os.dup2(new, self._fd, inheritable=False)
        finally:
            os.close(new)
        return True

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd, self._on = self._fd, -1, False
            os.close(fd)


def reopen_logged(logs: list[JsonLog], **fields: Any) -> None:
    """SIGUSR1's action in every process: reopen the file ``logs`` by name and
    say so in the first (error) log: ``logs_reopened`` is the new file's first
    line; on failure ``logs_reopen_failed`` and the old files stay in use."""
    out = logs[0]
    try:
        reopened = [log.target for log in logs if log.reopen()]
    except OSError as exc:
        out.error("logs_reopen_failed", error=str(exc), **fields)
        return
    out.info("logs_reopened", files=reopened, **fields)


class JsonLogHandler(logging.Handler):
    """Stdlib ``logging`` records as ``JsonLog`` lines (for library code)."""

    def __init__(self, log: JsonLog) -> None:
        super().__init__(_STDLIB_LEVEL[log.level])
        self.log = log

    def emit(self, record: logging.LogRecord) -> None:
        try:
            out: dict[str, Any] = {"ts": iso_ts(record.created), "level": _level_name(record.levelno)}
            name = getattr(record, "event", None)
            if name is not None:
                out["event"] = name
                out["pid"] = record.process
                out.update(getattr(record, "fields", {}))
            else:
                out["event"] = "log"
                out["pid"] = record.process
                out["logger"] = record.name
                out["msg"] = record.getMessage()
            if record.exc_info:
                out["traceback"] = logging.Formatter().formatException(record.exc_info)
            self.log.write(out)
        except Exception:  # noqa: BLE001 - logging's contract: a bad record never raises
            self.handleError(record)


def event(logger: logging.Logger, level: str, name: str, exc_info: bool = False, **fields: Any) -> None:
    """Log event ``name`` with ``fields`` through a stdlib ``logger``."""
    lvl = _STDLIB_LEVEL[level]
    if logger.isEnabledFor(lvl):
        logger.log(lvl, name, exc_info=exc_info, extra={"event": name, "fields": fields})


def route_stdlib(log: JsonLog) -> None:
    """Send every stdlib ``logging`` record of this process to ``log``, once:
    a handler installed before (a reconfigure) is replaced, not added to, so
    no line is printed twice."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(JsonLogHandler(log))
    root.setLevel(_STDLIB_LEVEL[log.level])


def configure_daemon(target: str, level: str) -> JsonLog:
    """A daemon's one log (``--log``, ``--log-level``), stdlib logging routed into it."""
    log = JsonLog(target, level.lower())
    route_stdlib(log)
    return log

"""JSON logs: one object per line.

Two streams: the *access log* (one line per HTTP request or TCP session,
fields fixed so tools can parse them) and the *error log* (structured events:
``{"ts", "level", "event", "pid", ...fields}``). Each line is written with a
single ``write`` on an unbuffered-by-line file so lines from several worker
processes sharing one file or pipe never interleave (O_APPEND / pipe writes
under PIPE_BUF are atomic; longer ones are rare and only risk a torn line).
"""
from __future__ import annotations

import json
import os
import sys
import time
from typing import IO, Any

_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}


class JsonLog:
    def __init__(self, target: str | None, level: str = "info") -> None:
        self._threshold = _LEVELS[level]
        self._file: IO[str] | None
        if target is None:
            self._file = None
        elif target == "stdout":
            self._file = sys.stdout
        elif target == "stderr":
            self._file = sys.stderr
        else:
            self._file = open(target, "a", encoding="utf-8", buffering=1)
        self._pid = os.getpid()

    def enabled(self, level: str = "info") -> bool:
        return self._file is not None and _LEVELS[level] >= self._threshold

    def write(self, record: dict[str, Any]) -> None:
        if self._file is None:
            return
        line = json.dumps(record, separators=(",", ":"), default=str) + "\n"
        try:
            self._file.write(line)
            self._file.flush()
        except (OSError, ValueError):
            pass  # a closed log must never take a connection down

    def event(self, level: str, event: str, **fields: Any) -> None:
        if not self.enabled(level):
            return
        record = {"ts": round(time.time(), 6), "level": level, "event": event, "pid": self._pid}
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

    def close(self) -> None:
        if self._file not in (None, sys.stdout, sys.stderr):
            self._file.close()


#: Process-wide logs; workers and the supervisor replace them after reading the config.
error_log = JsonLog("stderr")
access_log = JsonLog(None)


def configure(access_target: str | None, error_target: str, level: str) -> None:
    global error_log, access_log
    error_log = JsonLog(error_target, level)
    access_log = JsonLog(access_target, "info")

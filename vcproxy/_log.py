"""vcproxy's two JSON log streams (the format is ``vcrypto._log``'s, shared
with the daemons: ``{"ts", "level", "event", "pid", ...fields}``).

The *access log* has one line per HTTP request or TCP session, fields fixed
so tools can parse them (``ts`` in the same ISO-8601 form); the *error log*
has the structured events. Stdlib ``logging`` records of libraries loaded in
the process (the vcrypto engine frontend) go to the error log too.

``reopen_logs()`` (SIGUSR1, after logrotate renamed the files) opens both
files again by name.
"""
from __future__ import annotations

from vcrypto._log import JsonLog, iso_ts, reopen_logged, route_stdlib

__all__ = ["JsonLog", "access_log", "configure", "error_log", "iso_ts", "reopen_logs"]

#: Process-wide logs; workers and the supervisor replace them after reading the config.
error_log = JsonLog("stderr")
access_log = JsonLog(None)


def configure(access_target: str | None, error_target: str, level: str) -> None:
    global error_log, access_log
    old = (error_log, access_log)
    error_log = JsonLog(error_target, level)
    access_log = JsonLog(access_target, "info")
    route_stdlib(error_log)
    for log in old:
        log.close()


def reopen_logs(**fields: object) -> None:
    """SIGUSR1 (logrotate renamed the files): the error and access log files
    opened again by name, logged."""
    reopen_logged([error_log, access_log], **fields)

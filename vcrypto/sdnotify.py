"""systemd's readiness protocol (``sd_notify(3)``), for ``Type=notify`` units.

The service manager passes ``$NOTIFY_SOCKET``: an AF_UNIX datagram socket,
either a path (``/run/systemd/notify``) or, starting with ``@``, a name in
the abstract namespace (the ``@`` stands for the leading NUL byte). A daemon
sends newline-separated ``KEY=VALUE`` assignments in one datagram:
``READY=1`` once it serves (our daemons: after their sockets listen),
``STOPPING=1`` when it begins to shut down, ``STATUS=...`` free text for
``systemctl status``. Without ``$NOTIFY_SOCKET`` (not under systemd, or
``Type=simple``) every call is a no-op, so the daemons send unconditionally.

Only the unit's main process may notify by default (``NotifyAccess=main``):
a supervisor that starts daemons of its own must not hand them the variable
(``vcproxy.supervisor`` removes it from its children's environment).

This is the whole protocol we need; libsystemd's other features (fd store,
watchdog, ``vsock:`` addresses) are not used. The socket lives for one send
(Python sockets are close-on-exec, so no child inherits it).
"""
from __future__ import annotations

import os
import socket
import sys
from collections.abc import Mapping

ENV = "NOTIFY_SOCKET"


class NotifyError(OSError):
    """``$NOTIFY_SOCKET`` is set but the notification could not be sent."""


def notify_address(env: Mapping[str, str] = os.environ) -> str | None:
    """The socket address from ``$NOTIFY_SOCKET`` (abstract names with their NUL), or None."""
    value = env.get(ENV, "")
    if not value:
        return None
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    raise NotifyError(f"${ENV}={value!r}: only absolute paths and @abstract names are supported")


def notify(*assignments: str, env: Mapping[str, str] = os.environ) -> bool:
    """Send ``assignments`` (``"READY=1"``, ``"STATUS=..."``) as one datagram.

    Returns False when there is no ``$NOTIFY_SOCKET`` (nothing to do); raises
    ``NotifyError`` when there is one and the send fails (the caller logs it:
    systemd would otherwise wait for READY until its start timeout).
    """
    address = notify_address(env)
    if address is None:
        return False
    message = "\n".join(assignments).encode("utf-8")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(message)
    except OSError as exc:
        raise NotifyError(exc.errno, f"sd_notify to ${ENV}={env.get(ENV)!r}: {exc.strerror}") from exc
    return True


def notify_or_warn(*assignments: str, warn=None) -> bool:
    """``notify`` for a daemon's life cycle: a failure is reported through
    ``warn(message)`` (default: stderr) and never stops the daemon."""
    try:
        return notify(*assignments)
    except NotifyError as exc:
        if warn is None:
            print(exc, file=sys.stderr, flush=True)
        else:
            warn(str(exc))
        return False

"""Binding a daemon's unix socket safely across restarts.

A daemon killed with SIGKILL leaves its socket file behind, and ``bind``
then fails with EADDRINUSE. Unlinking unconditionally would be worse: a
second daemon started by mistake would silently steal the path from a live
one. So: if the path exists, try to connect; refused means stale (unlink and
bind), accepted means another daemon serves it (a clear error).
"""
from __future__ import annotations

import errno
import os
import socket
import stat


class SocketInUse(OSError):
    """Another live process is serving the socket path."""


def bind_unix_listener(path: str, backlog: int = 64) -> socket.socket:
    """A listening, blocking AF_UNIX stream socket bound at ``path``."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise SocketInUse(errno.EEXIST, f"{path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            try:
                os.unlink(path)          # stale: its daemon is gone
            except FileNotFoundError:
                pass
        else:
            raise SocketInUse(errno.EADDRINUSE, f"another process is serving {path}")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock

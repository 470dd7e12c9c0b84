"""Binding a daemon's unix socket safely across restarts, with the access it is given.

A daemon killed with SIGKILL leaves its socket file behind, and ``bind``
then fails with EADDRINUSE. Unlinking unconditionally would be worse: a
second daemon started by mistake would silently steal the path from a live
one. So: if the path exists, try to connect; refused means stale (unlink and
bind), accepted means another daemon serves it (a clear error).

Who may connect (``SocketAccess``). ``connect(2)`` to a unix socket needs
write permission on the socket file, so the file's mode and group decide
which users reach the daemon: in a split deployment the proxy runs as
``vcproxy`` and the daemons as ``vcrypto``, and a socket left at the umask's
``srwxr-xr-x`` refuses every worker (EACCES) — they would all silently fall
back to in-process crypto. The default is ``0660`` in the daemon's group
(its effective group, or the directory's group in a set-group-ID directory,
as for any new file); ``socket_group`` names another group the daemon's
user belongs to (a non-root process may only give a file to its own groups).

Why this is race-free without touching the process-wide umask: the mode and
group are set on the path after ``bind`` and *before* ``listen``. A unix
socket that is bound but not listening refuses every ``connect``
(ECONNREFUSED), so the first connection ever accepted already meets the
final permissions; nothing can connect in between with the umask's.
"""
from __future__ import annotations

import dataclasses
import errno
import grp
import os
import socket
import stat

DEFAULT_SOCKET_MODE = 0o660


class SocketInUse(OSError):
    """Another live process is serving the socket path."""


class SocketAccessError(ValueError):
    """A bad ``socket_mode`` / ``socket_group``; ``field`` names which."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


@dataclasses.dataclass(frozen=True)
class SocketAccess:
    """The permissions a daemon's listening socket file gets.

    ``gid`` None keeps the group the file is created with (the daemon's).
    """

    mode: int = DEFAULT_SOCKET_MODE
    gid: int | None = None

    @classmethod
    def parse(cls, mode: object = None, group: object = None) -> "SocketAccess":
        """From config values: ``mode`` an octal string (``"0660"``, ``"660"``,
        ``"0o660"``) or an int (YAML 1.1 reads an unquoted ``0660`` as the
        octal number already); ``group`` a group name or numeric gid. Raises
        ``SocketAccessError`` naming the field."""
        return cls(DEFAULT_SOCKET_MODE if mode is None else parse_socket_mode(mode),
                   None if group is None else resolve_socket_group(group))

    def describe(self) -> str:
        group = "the daemon's group" if self.gid is None else _group_name(self.gid)
        return f"mode {self.mode:04o}, group {group}"


def parse_socket_mode(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise SocketAccessError("socket_mode", f"expected an octal mode like '0660', got {value!r}")
    if isinstance(value, str):
        text = value.strip().lower().removeprefix("0o")
        if not text or any(c not in "01234567" for c in text):
            raise SocketAccessError("socket_mode", f"expected an octal mode like '0660', got {value!r}")
        value = int(text, 8)
    if not 0 <= value <= 0o777:
        raise SocketAccessError("socket_mode", f"expected permission bits 0000..0777, got {value:o} (octal)")
    # The daemon probes its own stale socket by connecting at restart (see
    # bind_unix_listener), which needs the owner's write bit.
    if not value & 0o200:
        raise SocketAccessError("socket_mode", f"{value:04o} leaves the owner without write "
                                               "permission (the daemon reconnects to its own socket)")
    return value


def resolve_socket_group(value: object) -> int:
    """A group name or a numeric gid -> gid; the group must exist here."""
    if isinstance(value, bool) or not isinstance(value, (int, str)) or value == "":
        raise SocketAccessError("socket_group", f"expected a group name or gid, got {value!r}")
    if isinstance(value, int) or value.isdigit():
        gid = int(value)
        try:
            grp.getgrgid(gid)
        except KeyError:
            raise SocketAccessError("socket_group", f"no group with gid {gid} on this machine") from None
        return gid
    try:
        return grp.getgrnam(value).gr_gid
    except KeyError:
        raise SocketAccessError("socket_group", f"no such group {value!r} on this machine") from None


def _group_name(gid: int) -> str:
    try:
        return f"{grp.getgrgid(gid).gr_name!r} ({gid})"
    except KeyError:
        return str(gid)


def _apply_access(path: str, access: SocketAccess) -> None:
    """Group, then mode, on the bound (not yet listening) socket file."""
    if access.gid is not None:
        try:
            os.lchown(path, -1, access.gid)
        except PermissionError as exc:
            raise SocketAccessError(
                "socket_group", f"cannot give {path} to group {_group_name(access.gid)}: "
                                f"{exc.strerror} (the daemon's user must be a member of that group)") from exc
    # chmod follows a symlink: only the daemon (and root) can write the
    # directory it was told to bind in, and the lstat check below catches a
    # path that is not our socket any more.
    os.chmod(path, access.mode)
    st = os.lstat(path)
    if not stat.S_ISSOCK(st.st_mode) or stat.S_IMODE(st.st_mode) != access.mode:
        raise SocketInUse(errno.EEXIST, f"{path} changed while its permissions were being set")


def bind_unix_listener(path: str, backlog: int = 64,
                       access: SocketAccess = SocketAccess()) -> socket.socket:
    """A listening, blocking AF_UNIX stream socket bound at ``path``, its file
    given ``access`` before it listens (see the module docstring)."""
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
        try:
            _apply_access(path, access)
        except BaseException:
            os.unlink(path)      # never leave a socket file with the wrong permissions
            raise
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock

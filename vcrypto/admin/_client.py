"""Blocking admin client (what ``vcrypto status`` uses) and the runtime file
that tells it where a supervisor put the daemons' admin sockets."""
from __future__ import annotations

import json
import os
import socket
import tempfile
import time

from ._protocol import AdminProtocolError, decode_reply, encode_request

#: File a supervisor writes in its runtime directory when it starts the
#: vcrypto daemons (``vcproxy run`` does): ``{"v": 1, "pid": SUPERVISOR_PID,
#: "daemons": {"vcrypto-host": {"socket": ..., "admin_socket": ...},
#: "vcrypto-engine-backend": {...}}}``.
RUNTIME_FILE = "vcrypto.json"
#: Where the systemd units put the daemons' sockets (deploy/systemd).
SYSTEM_RUNTIME_DIR = "/run/vcrypto"
DAEMONS = ("vcrypto-host", "vcrypto-engine-backend")
#: The admin socket a daemon listens on by default: next to its main socket.
_ADMIN_STEMS = {"vcrypto-host": "host", "vcrypto-engine-backend": "backend"}
MAX_REPLY_BYTES = 16 * 1024 * 1024


class AdminUnreachable(Exception):
    """No daemon answers on that admin socket (absent, refused, timed out)."""


def admin_socket_path(socket_path: str) -> str:
    """The default admin socket of a daemon listening on ``socket_path``:
    ``/run/vcrypto/host.sock`` -> ``/run/vcrypto/host.admin.sock``."""
    head, tail = os.path.split(socket_path)
    stem = tail[:-len(".sock")] if tail.endswith(".sock") else tail
    return os.path.join(head, f"{stem}.admin.sock")


def resolve_admin_socket(flag: str | None, socket_path: str) -> str | None:
    """A daemon's ``--admin-socket`` flag -> the path to serve (None: none):
    unset = next to its socket (``admin_socket_path``), ``none`` = no admin socket."""
    if flag is None:
        return admin_socket_path(socket_path)
    return None if flag == "none" else flag


def default_admin_paths(runtime_dir: str) -> dict[str, str]:
    """Admin sockets of the two daemons in ``runtime_dir``: from its runtime
    file when there is one, else the default names (``host.admin.sock``,
    ``backend.admin.sock``)."""
    paths = {name: os.path.join(runtime_dir, f"{stem}.admin.sock")
             for name, stem in _ADMIN_STEMS.items()}
    state = read_runtime_file(runtime_dir)
    if state is not None:
        for name in DAEMONS:
            admin = (state.get("daemons", {}).get(name) or {}).get("admin_socket")
            if isinstance(admin, str):
                paths[name] = admin
    return paths


def write_runtime_file(runtime_dir: str, daemons: dict[str, dict], pid: int | None = None) -> str:
    path = os.path.join(runtime_dir, RUNTIME_FILE)
    tmp = path + ".new"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"v": 1, "pid": os.getpid() if pid is None else pid, "daemons": daemons}, f,
                  indent=1)
    os.replace(tmp, path)
    return path


def read_runtime_file(runtime_dir: str) -> dict | None:
    try:
        with open(os.path.join(runtime_dir, RUNTIME_FILE), encoding="utf-8") as f:
            state = json.load(f)
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) and state.get("v") == 1 else None


def _alive(pid) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True     # someone else's process: alive
    return True


def find_runtime_dirs(tmp_dir: str | None = None) -> list[str]:
    """Runtime directories of running supervisors: directories in the temp
    directory (``$TMPDIR``, where ``vcproxy run`` makes one by default)
    holding a runtime file whose supervisor pid is alive, then
    ``/run/vcrypto`` if a daemon's admin socket is there."""
    base = tmp_dir or tempfile.gettempdir()
    found = []
    try:
        entries = sorted(os.scandir(base), key=lambda e: e.name)
    except OSError:
        entries = []
    for entry in entries:
        try:
            if not entry.is_dir(follow_symlinks=False):
                continue
        except OSError:
            continue
        state = read_runtime_file(entry.path)
        if state is not None and _alive(state.get("pid")):
            found.append(entry.path)
    if any(os.path.exists(p) for p in default_admin_paths(SYSTEM_RUNTIME_DIR).values()):
        found.append(SYSTEM_RUNTIME_DIR)
    return found


def _connect(sock: socket.socket, path: str, timeout_s: float) -> None:
    """connect(), retried while the daemon's listen backlog is full (a unix
    socket says EAGAIN at once instead of waiting)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            sock.connect(path)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise AdminUnreachable(f"{path}: the daemon's admin backlog stayed full for "
                                       f"{timeout_s}s") from None
            time.sleep(0.01)


def query(path: str, cmd: str = "status", *, timeout_s: float = 5.0) -> dict:
    """One request to the admin socket at ``path``; the reply's body (for
    ``status``: the status document). ``AdminUnreachable`` when nothing
    answers, ``AdminProtocolError`` for an error reply."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout_s)
    try:
        try:
            _connect(sock, path, timeout_s)
        except FileNotFoundError as exc:
            raise AdminUnreachable(f"{path}: no such socket (is the daemon running?)") from exc
        except ConnectionRefusedError as exc:
            raise AdminUnreachable(f"{path}: connection refused (the daemon is not running)") from exc
        except PermissionError as exc:
            raise AdminUnreachable(f"{path}: permission denied (needs the daemon's group)") from exc
        except OSError as exc:
            raise AdminUnreachable(f"{path}: {exc.strerror or exc}") from exc
        try:
            sock.sendall(encode_request(cmd))
            chunks, size = [], 0
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                chunks.append(data)
                size += len(data)
                if size > MAX_REPLY_BYTES:
                    raise AdminProtocolError("bad_reply", f"reply larger than {MAX_REPLY_BYTES} bytes")
        except socket.timeout as exc:
            raise AdminUnreachable(f"{path}: no reply within {timeout_s}s") from exc
        except OSError as exc:
            raise AdminUnreachable(f"{path}: {exc.strerror or exc}") from exc
    finally:
        sock.close()
    reply = decode_reply(b"".join(chunks))
    return reply.get(cmd, {})

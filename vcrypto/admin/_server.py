"""The admin socket server: a thin trio task around ``_protocol``.

``serve_admin(path, handler)`` listens on a unix socket and answers each
connection's one request with ``await handler(request)`` (a dict: the reply
body). It is built to sit next to a daemon's data path without ever hurting
it:

- a request line is bounded (``MAX_REQUEST_BYTES``) and must arrive within
  ``REQUEST_TIMEOUT_S``; the reply must be taken within ``REPLY_TIMEOUT_S``
  (a client that stops reading is cut off, never waited for);
- at most ``MAX_CLIENTS`` connections at once; one more is answered
  ``busy`` and closed;
- the ``status`` body is built at most once per ``STATUS_MIN_INTERVAL_S``
  (later requests in that window get the same document), so a client
  looping on the socket costs the daemon a bounded share of its loop;
- every error is a reply (``encode_error``) or a closed connection, logged
  at debug/warning: a handler that raises is answered ``internal`` and
  logged; nothing a client sends reaches the daemon's nursery.

The socket file gets mode ``SOCKET_MODE`` (0660: the daemon's user and
group, like its other sockets).
"""
from __future__ import annotations

import errno
import logging
import os
from collections.abc import Awaitable, Callable

import trio

from vcrypto._log import event
from vcrypto._unixsock import SocketAccess, bind_unix_listener

from ._protocol import (AdminProtocolError, AdminRequest, RequestReader, encode_error,
                        encode_reply)

log = logging.getLogger("vcrypto.admin")

MAX_CLIENTS = 8
REQUEST_TIMEOUT_S = 2.0
REPLY_TIMEOUT_S = 5.0
STATUS_MIN_INTERVAL_S = 0.05
SOCKET_MODE = 0o660

Handler = Callable[[AdminRequest], Awaitable[dict | None]]


class _StatusCache:
    def __init__(self) -> None:
        self.at = -1.0
        self.body: dict | None = None


async def serve_admin(path: str, handler: Handler, *, max_clients: int = MAX_CLIENTS,
                      request_timeout_s: float = REQUEST_TIMEOUT_S,
                      access: SocketAccess | None = None,
                      task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Serve the admin protocol on ``path`` until cancelled. ``access``: the
    daemon's own socket mode and group (default ``SOCKET_MODE``, the daemon's
    group), set before the socket listens."""
    # a stale socket of a killed daemon is replaced; a live daemon's is never stolen
    access = access if access is not None else SocketAccess(mode=SOCKET_MODE)
    listener = trio.socket.from_stdlib_socket(bind_unix_listener(path, backlog=64, access=access))
    try:
        event(log, "info", "admin_listening", socket=path)
        active = [0]
        cache = _StatusCache()
        async with trio.open_nursery() as nursery:
            task_status.started()
            while True:
                try:
                    conn, _ = await listener.accept()
                except OSError as exc:
                    if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM,
                                     errno.ECONNABORTED):
                        event(log, "warning", "admin_accept_failed", error=str(exc), backoff_s=0.1)
                        await trio.sleep(0.1)
                        continue
                    raise
                stream = trio.SocketStream(conn)
                if active[0] >= max_clients:
                    nursery.start_soon(_refuse, stream)
                    continue
                active[0] += 1
                nursery.start_soon(_serve_one, stream, handler, cache, request_timeout_s, active)
    finally:
        listener.close()
        try:
            os.unlink(path)
        except OSError:
            pass


async def _refuse(stream: trio.SocketStream) -> None:
    with trio.move_on_after(0.5):
        await _send(stream, encode_error("busy", f"more than {MAX_CLIENTS} admin clients at once"))
    await trio.aclose_forcefully(stream)


async def _send(stream: trio.SocketStream, data: bytes) -> None:
    try:
        await stream.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass   # the client went away: nothing to tell it


async def _read_request(stream: trio.SocketStream, timeout_s: float) -> AdminRequest:
    reader = RequestReader()
    with trio.move_on_after(timeout_s):
        while True:
            try:
                data = await stream.receive_some(4096)
            except trio.BrokenResourceError as exc:
                raise AdminProtocolError("bad_request", f"connection broken: {exc}") from exc
            if not data:
                return reader.eof()
            req = reader.feed(data)
            if req is not None:
                return req
    raise AdminProtocolError("timeout", f"no complete request line within {timeout_s}s")


async def _serve_one(stream: trio.SocketStream, handler: Handler, cache: _StatusCache,
                     timeout_s: float, active: list[int]) -> None:
    try:
        try:
            req = await _read_request(stream, timeout_s)
            reply = await _answer(req, handler, cache)
        except AdminProtocolError as exc:
            log.debug("admin request refused: %s", exc)
            reply = encode_error(exc.kind, exc.detail)
        with trio.move_on_after(REPLY_TIMEOUT_S):
            await _send(stream, reply)
    finally:
        active[0] -= 1
        await trio.aclose_forcefully(stream)


async def _answer(req: AdminRequest, handler: Handler, cache: _StatusCache) -> bytes:
    if req.cmd == "ping":
        return encode_reply("ping")
    now = trio.current_time()
    if req.cmd == "status" and cache.body is not None and now - cache.at < STATUS_MIN_INTERVAL_S:
        return encode_reply("status", cache.body)
    try:
        with trio.fail_after(REPLY_TIMEOUT_S):
            body = await handler(req)
        reply = encode_reply(req.cmd, body)
    except trio.TooSlowError:
        return encode_error("unavailable", f"no {req.cmd} within {REPLY_TIMEOUT_S}s "
                                           f"(the daemon's loop does not answer)")
    except AdminProtocolError:
        raise
    except Exception as exc:  # a bug building the document must not take the daemon down
        event(log, "error", "admin_handler_failed", exc_info=True, cmd=req.cmd)
        return encode_error("internal", f"{type(exc).__name__}: {exc}")
    if req.cmd == "status":
        cache.at, cache.body = trio.current_time(), body
    return reply

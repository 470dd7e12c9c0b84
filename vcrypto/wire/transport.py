"""Framed vhost-user messages over a trio unix stream socket, with fds.

The one piece of I/O in ``vcrypto.wire``: both ends (driver and host) use it
so the framing lives in one place. Fds arrive as SCM_RIGHTS ancillary data on
the first ``recvmsg`` of a message (the kernel never splits ancillary data
from the byte it was sent with); received fds belong to the caller.
"""
from __future__ import annotations

import array
import os
import socket

import trio

from vcrypto.wire import vhost_user as vu

_FD_BYTES = array.array("i").itemsize


class ConnectionClosed(Exception):
    """The peer closed the connection (cleanly, between messages)."""


def _fds_from_ancdata(ancdata) -> list[int]:
    fds: list[int] = []
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            arr = array.array("i")
            arr.frombytes(data[: len(data) - len(data) % _FD_BYTES])
            fds.extend(arr)
    return fds


async def recv_message(sock: trio.socket.SocketType) -> vu.Message:
    """One message; raises ``ConnectionClosed`` at EOF before a header and
    ``VhostUserError`` for malformed framing (fds received are closed)."""
    header = b""
    fds: list[int] = []
    try:
        while len(header) < vu.HEADER_BYTES:
            data, ancdata, flags, _addr = await sock.recvmsg(
                vu.HEADER_BYTES - len(header), socket.CMSG_SPACE(vu.MAX_FDS * _FD_BYTES))
            fds.extend(_fds_from_ancdata(ancdata))
            if flags & socket.MSG_CTRUNC:
                raise vu.VhostUserError("too many fds in one message")
            if not data:
                if header:
                    raise vu.VhostUserError("connection closed inside a header")
                raise ConnectionClosed()
            header += data
        request, flags, size = vu.decode_header(header)
        payload = bytearray()
        while len(payload) < size:
            chunk = await sock.recv(size - len(payload))
            if not chunk:
                raise vu.VhostUserError("connection closed inside a payload")
            payload += chunk
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return vu.Message(request, flags, bytes(payload), tuple(fds))


async def send_message(sock: trio.socket.SocketType, request: int, payload: bytes = b"",
                       *, flags: int = vu.VHOST_USER_VERSION, fds: list[int] = ()) -> None:
    data = vu.encode(request, payload, flags)
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    sent = await sock.sendmsg([data], anc)
    if sent < len(data):
        await _send_all(sock, data[sent:])


async def _send_all(sock, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = await sock.send(view)
        view = view[n:]

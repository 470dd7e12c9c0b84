"""``SocketStream``: trio.SocketStream's contract with fewer scheduler passes.

Why: ``trio.SocketStream`` runs each ``send``/``recv`` through
``_nonblocking_helper``: a cancellation check, the call, and when the call
did not block, ``cancel_shielded_checkpoint()`` — a full pass of trio's run
loop (an ``epoll_wait`` system call and the scheduler) only to let other
tasks run. A proxied keep-alive request makes four socket calls, two or
three of which complete at once, so it paid two or three such passes on top
of the two waits it really needs (client request, upstream response).

Here a call that completes at once is a cancellation point only
(``checkpoint_if_cancelled``: a cancelled scope still raises
``trio.Cancelled`` before any I/O, as with trio). The schedule point is
kept, bounded: after ``YIELD_AFTER_SYNC_OPS`` consecutive calls on one
stream that did not block, the next one yields, so a connection whose
sockets are always ready (bulk through fast peers) cannot hold the worker's
loop for more than a few calls. A call that would block waits with
``trio.lowlevel.wait_readable``/``wait_writable`` (a real checkpoint) and
resets the count.

I/O is ``os.read``/``os.write`` on the socket's descriptor (non-blocking:
trio sockets are), which for a connected TCP socket are ``recv``/``send``
without flags. Closing goes through the trio socket (``.socket``), which
wakes any task waiting on the descriptor (``notify_closing``); ``aclose``
is a cancellation point and a (bounded, as above) schedule point, except
under a cancelled scope, where it closes and returns without raising. As
``trio.SocketStream``: TCP_NODELAY is set, concurrent ``send_all`` (or
``receive_some``) calls raise ``trio.BusyResourceError``, a closed stream
raises ``trio.ClosedResourceError`` and socket errors are
``trio.BrokenResourceError``.

Bounded calls: ``send_all_within``/``receive_some_within`` are ``send_all``/
``receive_some`` that give up with ``trio.TooSlowError`` once they have
spent ``timeout_s`` (from the call) waiting for the peer. They enter a
deadline ``CancelScope`` only around a wait: a call that completes at once
(most upstream request writes, a response already buffered) pays none. A
scope costs more than the socket call it would guard (its enter and exit run
two generator-based context managers in trio, ~5-7 µs here), and a
keep-alive request made four or five of them.
"""
from __future__ import annotations

import errno
import math
import os
import socket as stdsocket
from typing import Any

import trio

DEFAULT_RECEIVE_SIZE = 65536
#: Consecutive calls completed without waiting before one yields to the scheduler.
YIELD_AFTER_SYNC_OPS = 4

_checkpoint_if_cancelled = trio.lowlevel.checkpoint_if_cancelled
_cancel_shielded_checkpoint = trio.lowlevel.cancel_shielded_checkpoint
_wait_readable = trio.lowlevel.wait_readable
_current_effective_deadline = trio.current_effective_deadline
_wait_writable = trio.lowlevel.wait_writable
_CancelScope = trio.CancelScope
_CLOSED_ERRNOS = frozenset({errno.EBADF, errno.ENOTSOCK})


class SocketStream(trio.abc.HalfCloseableStream):
    """A connected TCP trio socket as a stream (see the module docstring)."""

    def __init__(self, socket: trio.socket.SocketType, *, nodelay_inherited: bool = False) -> None:
        """``nodelay_inherited``: the socket was accepted from a listening
        socket with TCP_NODELAY set, which Linux copies to every accepted
        socket (``_listener.bind_reuseport``): no setsockopt call of its own."""
        if not isinstance(socket, trio.socket.SocketType):
            raise TypeError("SocketStream requires a trio socket object")
        self.socket = socket
        self._fd = socket.fileno()
        self._sending = False
        self._receiving = False
        self._sync_ops = 0
        self._eof_sent = False
        if not nodelay_inherited:
            try:
                socket.setsockopt(stdsocket.IPPROTO_TCP, stdsocket.TCP_NODELAY, True)
            except OSError:
                pass  # (not TCP: nothing to turn off)

    def setsockopt(self, level: int, option: int, value: Any) -> None:
        self.socket.setsockopt(level, option, value)

    def getsockopt(self, level: int, option: int, buffersize: int = 0) -> Any:
        if buffersize:
            return self.socket.getsockopt(level, option, buffersize)
        return self.socket.getsockopt(level, option)

    def _check_open(self) -> None:
        if self.socket.fileno() == -1:
            raise trio.ClosedResourceError("this stream was closed")

    async def _after_sync_op(self) -> None:
        self._sync_ops += 1
        if self._sync_ops >= YIELD_AFTER_SYNC_OPS:
            self._sync_ops = 0
            await _cancel_shielded_checkpoint()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._send_all(data, None)

    async def send_all_within(self, data: bytes | bytearray | memoryview, timeout_s: float) -> None:
        """``send_all``, raising ``trio.TooSlowError`` if it waited ``timeout_s`` (see the module docstring)."""
        await self._send_all(data, trio.current_time() + timeout_s)

    async def _send_all(self, data: bytes | bytearray | memoryview, deadline: float | None) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is currently sending data on this SocketStream")
        self._sending = True
        try:
            await _checkpoint_if_cancelled()
            self._check_open()
            if self._eof_sent:
                raise trio.ClosedResourceError("can't send data after sending EOF")
            blocked = False
            with memoryview(data) as view:
                remaining = view.nbytes
                sent = 0
                while sent < remaining:
                    try:
                        sent += os.write(self._fd, view[sent:])
                    except BlockingIOError:
                        blocked = True
                        self._sync_ops = 0
                        await self._wait(_wait_writable, deadline)
                        self._check_open()
                    except OSError as exc:
                        raise self._translate(exc) from exc
            if not blocked:
                await self._after_sync_op()
        finally:
            self._sending = False

    async def _wait(self, wait: Any, deadline: float | None) -> None:
        """``wait`` (readable or writable) on the socket, until ``deadline`` if one is given."""
        if deadline is None:
            await wait(self.socket)
            return
        with _CancelScope(deadline=deadline) as scope:
            await wait(self.socket)
        if scope.cancelled_caught:
            raise trio.TooSlowError

    async def wait_send_all_might_not_block(self) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is currently sending data on this SocketStream")
        self._sending = True
        try:
            self._check_open()
            await _wait_writable(self.socket)
        except OSError as exc:
            raise self._translate(exc) from exc
        finally:
            self._sending = False

    async def send_eof(self) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is currently sending data on this SocketStream")
        self._sending = True
        try:
            await trio.lowlevel.checkpoint()
            self._check_open()
            if self._eof_sent:
                return
            self._eof_sent = True
            try:
                self.socket.shutdown(stdsocket.SHUT_WR)
            except OSError as exc:
                if exc.errno != errno.ENOTCONN:  # (the peer reset first: nothing left to end)
                    raise self._translate(exc) from exc
        finally:
            self._sending = False

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        return await self._receive_some(max_bytes, None)

    async def receive_some_within(self, max_bytes: int | None, timeout_s: float) -> bytes:
        """``receive_some``, raising ``trio.TooSlowError`` if it waited ``timeout_s`` (see the module docstring)."""
        return await self._receive_some(max_bytes, trio.current_time() + timeout_s)

    async def _receive_some(self, max_bytes: int | None, deadline: float | None) -> bytes:
        if max_bytes is None:
            max_bytes = DEFAULT_RECEIVE_SIZE
        elif max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        if self._receiving:
            raise trio.BusyResourceError("another task is currently receiving data on this SocketStream")
        self._receiving = True
        try:
            await _checkpoint_if_cancelled()
            self._check_open()
            try:
                data = os.read(self._fd, max_bytes)
            except BlockingIOError:
                pass
            except OSError as exc:
                raise self._translate(exc) from exc
            else:
                await self._after_sync_op()
                return data
            self._sync_ops = 0
            while True:
                await self._wait(_wait_readable, deadline)
                self._check_open()
                try:
                    return os.read(self._fd, max_bytes)
                except BlockingIOError:
                    continue
                except OSError as exc:
                    raise self._translate(exc) from exc
        finally:
            self._receiving = False

    def _translate(self, exc: OSError) -> Exception:
        if exc.errno in _CLOSED_ERRNOS:
            return trio.ClosedResourceError("this stream was closed")
        return trio.BrokenResourceError(f"socket error: {exc}")

    async def aclose(self) -> None:
        self.socket.close()
        if _current_effective_deadline() == -math.inf:
            # Cancelled, as under ``trio.aclose_forcefully`` (how ``TLSStream``
            # closes its transport, once per connection): the socket is closed
            # either way, and raising ``Cancelled`` here only to have the
            # forceful close's scope catch it cost ~30 us per connection (an
            # exception, a traceback and two scheduler passes).
            return
        await _checkpoint_if_cancelled()
        await self._after_sync_op()  # the schedule point, bounded as for send/receive

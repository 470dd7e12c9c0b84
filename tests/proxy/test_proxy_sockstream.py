"""vcproxy's SocketStream (vcproxy.proxy._sockstream): trio's stream contract
(trio.testing's conformance checks, as trio.SocketStream passes them), and
the mechanism: a call that completes at once is a cancellation point but not
a schedule point, except every YIELD_AFTER_SYNC_OPS-th."""
from __future__ import annotations

import os
import socket as stdsocket

import pytest
import trio
import trio.testing

from vcproxy.proxy._sockstream import YIELD_AFTER_SYNC_OPS, SocketStream


async def _tcp_pair() -> tuple[SocketStream, SocketStream]:
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    client = trio.socket.socket()
    await client.connect(listener.getsockname())
    server, _ = await listener.accept()
    listener.close()
    return SocketStream(client), SocketStream(server)


async def _clogged_pair() -> tuple[SocketStream, SocketStream]:
    a, b = await _tcp_pair()
    for s in (a, b):  # small buffers, then fill them: the next send_all blocks
        s.setsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_SNDBUF, 1)
        s.setsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_RCVBUF, 1)
    for s in (a, b):
        try:
            while True:
                os.write(s.socket.fileno(), b"x" * 10000)
        except BlockingIOError:
            pass
    return a, b


async def test_trio_half_closeable_stream_contract(monkeypatch):
    """Everything trio.SocketStream promises; with a schedule point on every call
    (YIELD_AFTER_SYNC_OPS = 1), since the checks assert each call is one."""
    monkeypatch.setattr("vcproxy.proxy._sockstream.YIELD_AFTER_SYNC_OPS", 1)
    await trio.testing.check_half_closeable_stream(_tcp_pair, _clogged_pair)


async def test_sync_sends_yield_only_every_few_calls():
    a, b = await _tcp_pair()
    ran = []

    async def other():
        while True:
            ran.append(sends)
            await trio.lowlevel.checkpoint()

    sends = 0
    async with trio.open_nursery() as nursery:
        nursery.start_soon(other)
        await trio.lowlevel.checkpoint()  # it runs once, then waits for our next yield
        ran.clear()
        for _ in range(16):
            await a.send_all(b"ping")  # the socket buffer takes it: never blocks
            sends += 1
        nursery.cancel_scope.cancel()
    # the other task ran only at every YIELD_AFTER_SYNC_OPS-th send, not after
    # each (trio may run it more than once per yield: its batches are shuffled)
    assert ran and len(ran) <= 16 // YIELD_AFTER_SYNC_OPS + 2 < 16, ran
    assert all(n % YIELD_AFTER_SYNC_OPS == YIELD_AFTER_SYNC_OPS - 1 for n in ran), ran
    assert len(await b.receive_some(65536)) > 0
    await a.aclose()
    await b.aclose()


async def test_a_cancelled_scope_raises_before_any_io():
    a, b = await _tcp_pair()
    with trio.CancelScope() as scope:
        scope.cancel()
        with pytest.raises(trio.Cancelled):
            await a.send_all(b"never sent")
    with trio.move_on_after(0.2):
        assert await b.receive_some(100) is None  # nothing arrives
    await a.send_all(b"data waiting")
    with trio.CancelScope() as scope:
        scope.cancel()
        with pytest.raises(trio.Cancelled):
            await b.receive_some(100)  # even with data buffered: cancelled first
    assert await b.receive_some(100) == b"data waiting"
    await a.aclose()
    await b.aclose()


class _CountedScope:
    """trio.CancelScope (not subclassable), counting the scopes made."""

    entered = 0

    def __new__(cls, **kwargs):
        cls.entered += 1
        return trio.CancelScope(**kwargs)


async def test_bounded_calls_enter_a_deadline_scope_only_to_wait(monkeypatch):
    """send_all_within/receive_some_within: a call that completes at once costs
    no CancelScope; one that has to wait is bounded by its timeout."""
    monkeypatch.setattr("vcproxy.proxy._sockstream._CancelScope", _CountedScope)
    _CountedScope.entered = 0
    a, b = await _tcp_pair()
    await a.send_all_within(b"request", 5.0)
    assert await b.receive_some_within(100, 5.0) == b"request"
    assert _CountedScope.entered == 0
    started = trio.current_time()
    with pytest.raises(trio.TooSlowError):
        await b.receive_some_within(100, 0.2)  # nothing comes
    assert 0.2 <= trio.current_time() - started < 2
    assert _CountedScope.entered == 1
    await a.aclose()
    await b.aclose()
    c, d = await _clogged_pair()
    with pytest.raises(trio.TooSlowError):
        await c.send_all_within(b"x" * 100000, 0.2)  # the peer reads nothing
    assert _CountedScope.entered >= 2
    await c.aclose()
    await d.aclose()


async def test_a_cancelled_close_closes_without_raising():
    """Under a cancelled scope (``trio.aclose_forcefully``, how ``TLSStream``
    closes its transport on every connection) ``aclose`` closes the socket
    and returns: raising ``Cancelled`` there only for the scope to catch it
    cost an exception and two scheduler passes per connection."""
    a, b = await _tcp_pair()
    reached = False
    with trio.CancelScope() as scope:
        scope.cancel()
        await a.aclose()
        reached = True
    assert reached
    assert a.socket.fileno() == -1
    assert await b.receive_some(100) == b""  # the peer sees the close
    with pytest.raises(trio.ClosedResourceError):
        await a.send_all(b"x")
    await b.aclose()

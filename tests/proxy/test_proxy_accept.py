"""The accept loop's ``ConnectionServer._accept``: clients already in the
backlog are accepted without a scheduler pass each (trio's ``accept()``
yields after every one), yet every ``YIELD_AFTER_ACCEPTS``-th yields, so a
connect flood cannot hold the worker's loop; an empty backlog waits; a
cancelled accept raises before touching the backlog."""
from __future__ import annotations

import socket as stdsocket

import pytest
import trio

from vcproxy.proxy import _listener
from vcproxy.proxy._listener import ConnectionServer, open_listener

CLIENTS = 12


def _server() -> ConnectionServer:
    return ConnectionServer(lambda: [], None, None, 64, trio.Event())


def _connect(port: int) -> stdsocket.socket:
    return stdsocket.create_connection(("127.0.0.1", port))  # completes via the backlog


@pytest.mark.parametrize("yield_after", [_listener.YIELD_AFTER_ACCEPTS, 1])
async def test_backlogged_clients_are_accepted_with_bounded_yields(monkeypatch, yield_after):
    monkeypatch.setattr(_listener, "YIELD_AFTER_ACCEPTS", yield_after)
    lsock = await open_listener("127.0.0.1", 0)
    port = lsock.getsockname()[1]
    clients = [_connect(port) for _ in range(CLIENTS)]
    server = _server()
    ran = []
    accepted = 0

    async def other():
        while True:
            ran.append(accepted)
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(other)
        await trio.lowlevel.checkpoint()
        ran.clear()
        for _ in range(CLIENTS):
            sock, addr = await server._accept(lsock)
            assert isinstance(sock, trio.socket.SocketType) and addr[0] == "127.0.0.1"
            sock.close()
            accepted += 1
        nursery.cancel_scope.cancel()
    yields = CLIENTS // yield_after
    assert ran and len(ran) <= yields + 2, ran
    assert all(n % yield_after == yield_after - 1 for n in ran), ran  # (the yield is inside the k-th accept)
    if yield_after > 1:
        assert len(ran) < CLIENTS  # fewer scheduler passes than clients (trio's accept: one each)
    for c in clients:
        c.close()
    lsock.close()


async def test_an_empty_backlog_waits_and_a_cancelled_accept_raises_first():
    lsock = await open_listener("127.0.0.1", 0)
    port = lsock.getsockname()[1]
    server = _server()
    with trio.move_on_after(0.2) as scope:
        await server._accept(lsock)
    assert scope.cancelled_caught  # nobody connected: it waited
    client = _connect(port)
    with trio.CancelScope() as scope:
        scope.cancel()
        with pytest.raises(trio.Cancelled):
            await server._accept(lsock)
    sock, _ = await server._accept(lsock)  # the client was left in the backlog
    sock.close()
    client.close()
    lsock.close()


async def test_accepted_sockets_have_tcp_nodelay_without_a_call_of_their_own():
    """The listener sets TCP_NODELAY once on the listening socket; every
    accepted socket has it (Linux copies it), so the per-connection
    SocketStream skips its setsockopt."""
    lsock = await open_listener("127.0.0.1", 0)
    client = _connect(lsock.getsockname()[1])
    sock, _ = await _server()._accept(lsock)
    assert sock.getsockopt(stdsocket.IPPROTO_TCP, stdsocket.TCP_NODELAY)
    sock.close()
    client.close()
    lsock.close()


class _AbortingListener:
    """A real listening socket whose next accept() fails as the kernel's does
    for a client that reset while in the backlog (ECONNABORTED; Linux reports
    it rarely, other kernels often): the failure cannot be made on demand on
    loopback, so it is raised here, in front of a real accept()."""

    def __init__(self, sock: stdsocket.socket, failures: list[int]):
        self.sock, self.failures = sock, failures

    def accept(self):
        if self.failures:
            raise OSError(self.failures.pop(0), "injected")
        return self.sock.accept()

    def fileno(self):
        return self.sock.fileno()


async def test_a_client_that_aborted_in_the_backlog_is_skipped_not_fatal():
    """accept() errors that concern one client (ECONNABORTED, EPROTO, ...)
    skip that client: before, any errno but the out-of-resources ones ended
    the accept loop and with it the worker."""
    import errno
    lsock = await open_listener("127.0.0.1", 0)
    client = _connect(lsock.getsockname()[1])
    listener = _AbortingListener(lsock, [errno.ECONNABORTED, errno.EPROTO])
    with trio.fail_after(5):
        sock, addr = await _server()._accept(listener)
    assert addr[0] == "127.0.0.1" and listener.failures == []
    sock.close()
    client.close()
    with pytest.raises(OSError):  # a listener's own failure still ends the loop
        await _server()._accept(_AbortingListener(lsock, [errno.EBADF]))
    lsock.close()

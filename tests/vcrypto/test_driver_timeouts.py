"""No unbounded waits in the driver: a device that stops answering gives the
caller a typed ``DriverTimeout`` within the bound, never a stall."""
from __future__ import annotations

import os
import signal
import socket
import time

import pytest
import trio

from vcrypto.driver import Driver, DriverError, DriverTimeout, Item, PayloadPool, SessionParams
from vcrypto.ops import Alg, Op


async def test_attach_to_a_peer_that_never_answers_times_out(tmp_path):
    """A fake peer accepts the vhost-user connection, reads, never replies."""
    path = str(tmp_path / "silent.sock")
    listener = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await listener.bind(path)
    listener.listen(1)
    received = []

    async def silent_peer():
        conn, _ = await listener.accept()
        with conn:
            while data := await conn.recv(4096):
                received.append(data)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(silent_peer)
        t0 = time.monotonic()
        with trio.fail_after(10):
            with pytest.raises(DriverTimeout, match="GET_FEATURES") as info:
                await Driver.attach(path, control_timeout_s=0.5)
        assert 0.4 < time.monotonic() - t0 < 5
        assert "GET_FEATURES" in info.value.what
        assert isinstance(info.value, DriverError)
        nursery.cancel_scope.cancel()
    listener.close()
    assert received, "the driver sent its first message"


@pytest.fixture
def stopped(start_host):
    """A real host, and a way to freeze it (SIGSTOP) that is always undone."""
    host = start_host()
    frozen = []

    def freeze():
        os.kill(host.proc.pid, signal.SIGSTOP)
        frozen.append(True)

    yield host, freeze
    if frozen:
        os.kill(host.proc.pid, signal.SIGCONT)


async def test_control_request_to_a_frozen_host_times_out_and_driver_refuses_more(stopped):
    host, freeze = stopped
    with trio.fail_after(20):
        async with await Driver.attach(host.socket_path, control_timeout_s=0.5) as drv:
            sid = await drv.create_session(SessionParams(Op.AEAD_SEAL, Alg.AES_128_GCM,
                                                         key=os.urandom(16)))
            assert sid >= 0
            freeze()
            t0 = time.monotonic()
            with pytest.raises(DriverTimeout, match="CREATE_CRYPTO_SESSION"):
                await drv.create_session(SessionParams(Op.AEAD_SEAL, Alg.AES_128_GCM,
                                                       key=os.urandom(16)))
            assert time.monotonic() - t0 < 5
            # the connection is out of step now: refused at once, not stalled
            with pytest.raises(DriverError, match="unusable"):
                await drv.stats()


async def test_payload_run_past_its_timeout_raises(stopped):
    host, freeze = stopped
    with trio.fail_after(20):
        async with await Driver.attach(host.socket_path) as drv:
            sid = await drv.create_session(SessionParams(Op.AEAD_SEAL, Alg.AES_128_GCM,
                                                         key=os.urandom(16)))
            pool = await PayloadPool.create(drv)
            item = Item(sid, Op.AEAD_SEAL, Alg.AES_128_GCM, b"x", os.urandom(12))
            [ok] = await pool.run([item], timeout_s=10)
            assert ok.ok
            freeze()
            with pytest.raises(DriverTimeout, match=r"PayloadPool.run: 3 of 3 requests"):
                await pool.run([item] * 3, timeout_s=0.5)
            with pytest.raises(DriverTimeout, match="wait_used"):
                await drv.wait_used(0, deadline=trio.current_time() + 0.2)

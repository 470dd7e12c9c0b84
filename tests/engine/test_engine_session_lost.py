"""A session the host no longer knows (INVSESS) is "session lost", not the
request's fault: the backend recreates it at the device and redoes the
request once; the application sees the right answer, never INVALID."""
from __future__ import annotations

import os
import threading

import pytest
import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

import engine_daemons
from vcrypto.engine.backend._device import LocalDevice
from vcrypto.engine.backend._hostdevice import HostDevice
from vcrypto.engine import SessionMeta, SlotStatus
from vcrypto.engine.backend import Backend, BackendConfig
from vcrypto.engine.frontend import Frontend
from vcrypto.ops import Alg, Op


@pytest.fixture(params=["host", "local"])
def backend_in_thread(request, tmp_path):
    """An engine-backend run in this process (on its own thread), so the test
    can reach its device: a real host subprocess, or the no-host LocalDevice."""
    host = engine_daemons.host(tmp_path).start() if request.param == "host" else None
    backend = Backend(BackendConfig(socket_path=str(tmp_path / "backend.sock"),
                                    host_socket=host.socket_path if host else None),
                      (lambda: HostDevice(host.socket_path)) if host else LocalDevice)
    thread = threading.Thread(target=backend.run, name="engine-backend", daemon=True)
    thread.start()
    try:
        yield backend
    finally:
        backend.stop()
        thread.join(10)
        assert not thread.is_alive(), "backend loop did not stop"
        backend.close()
        if host is not None:
            host.stop()


async def _wait_device(backend: Backend) -> None:
    with trio.fail_after(10):
        while backend.device is None:
            await trio.sleep(0.01)


async def test_request_on_a_session_the_host_lost_is_redone_on_a_new_one(backend_in_thread):
    # A signing session (traffic keys have none: they travel stateless), Ed25519
    # so every answer is checkable byte for byte.
    backend = backend_in_thread
    await _wait_device(backend)
    fe = Frontend(backend.cfg.socket_path)
    assert await fe.start()
    key = ed25519.Ed25519PrivateKey.generate()
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    h = await fe.open_session(SessionMeta(Op.SIGN, Alg.ED25519, der))
    with trio.fail_after(10):
        [(st, out)] = await fe.run(h, [(b"first", b"", b"")])
    assert (st, out) == (SlotStatus.OK, key.sign(b"first"))
    [sess] = [s for s in backend.sessions if s.device_sid is not None]
    lost_sid = sess.device_sid
    completed = backend.stats.completed

    # The device forgets the session behind the backend's back (at the host:
    # closed on the backend's own connection); the backend's table still
    # names it.
    await trio.to_thread.run_sync(backend.device.close_session, lost_sid)

    with trio.fail_after(10):
        results = await fe.run(h, [(b"after %d" % i, b"", b"") for i in range(3)])
    assert results == [(SlotStatus.OK, key.sign(b"after %d" % i)) for i in range(3)]
    assert backend.stats.completed == completed + 3        # at the device, not in-process
    assert backend.stats.sessions_lost == 1                # recreated once for the three
    assert backend.stats.session_lost_redos == 3
    assert sess.device_sid is not None and sess.device_sid != lost_sid
    # the new session serves on, no further loss
    with trio.fail_after(10):
        [(st, _)] = await fe.run(h, [(b"again", b"", b"")])
    assert st is SlotStatus.OK and backend.stats.session_lost_redos == 3
    assert fe.stats.fallback_requests == 0 and fe.stats.redone_requests == 0
    await fe.aclose()

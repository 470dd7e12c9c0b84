"""Stall tests: SIGSTOP the host, then the engine-backend, in the middle of a
stream of TLS handshakes and transfers. A hung daemon closes no socket, so
only the deadlines notice: the backend fails a host whose oldest request is
past ``--stall-timeout-s``, a frontend detaches from a backend whose oldest
request is past its ``stall_timeout_s``. Clients never see an error (every
request is redone in-process), the stall counters rise, and after SIGCONT
traffic returns to vcrypto (the host's own counters prove it)."""
from __future__ import annotations

import json

import pytest
import trio

import engine_daemons
import tls_support
from vcproxy.vcrypto_provider import VcryptoProvider
from vcrypto.engine.frontend import Frontend

pytestmark = pytest.mark.daemons

# Short deadlines keep the tests fast; still far above a request's normal
# outstanding time here (~0.8 s at worst under a full-slot RSA burst, far
# more load than two sequential clients make).
HOST_STALL_S = 1.5
FRONTEND_STALL_S = 3.0


async def _stream(tmp_path, test):
    host = engine_daemons.host(tmp_path).start()
    backend = engine_daemons.backend(tmp_path, host_socket=host.socket_path,
                                     extra=["--stall-timeout-s", str(HOST_STALL_S)]).start()
    try:
        fe = Frontend(backend.socket_path, reconnect_interval_s=0.1, linger_s=0.3,
                      stall_timeout_s=FRONTEND_STALL_S, control_timeout_s=FRONTEND_STALL_S)
        provider = VcryptoProvider(backend.socket_path, frontend=fe)
        cert, key = tls_support.self_signed()
        async with tls_support.echo_server(tls_support.config(cert, key), provider) as (port, errors):
            loops = [tls_support.ClientLoop(port, cert, max_connections=150) for _ in range(2)]
            async with trio.open_nursery() as nursery:
                for loop in loops:
                    nursery.start_soon(trio.to_thread.run_sync, loop.run)
                try:
                    for loop in loops:
                        await loop.more(2)
                    assert fe.stats.fallback_requests == 0 and fe.stats.submitted > 0
                    await test(host, backend, fe, loops)
                finally:
                    for loop in loops:
                        loop.stop.set()
            for loop in loops:
                assert loop.errors == []
        assert errors == []
        await provider.aclose()
    finally:
        backend.stop()  # stop() sends SIGCONT first: never leave a daemon stopped
        host.stop()


async def _backend_stats(backend) -> dict:
    """Over a connection of its own (the frontend may be between attachments)."""
    return await trio.to_thread.run_sync(engine_daemons.backend_stats, backend.socket_path)


async def _offloads_to_host(backend, fe: Frontend, loops) -> None:
    """Both clients get through more connections, and the frontend's new
    requests run at the host (its own counter of executed requests rises)."""
    async def host_requests():
        st = await _backend_stats(backend)
        return (st["device_stats"] or {}).get("device", {}).get("requests", 0)

    async def device_up():
        return fe.attached and (await _backend_stats(backend))["device_up"]
    await tls_support.until(device_up, timeout_s=30)
    sub0, done0 = fe.stats.submitted, await host_requests()
    for loop in loops:
        await loop.more(2)
    assert fe.stats.submitted > sub0

    async def host_ran_them():
        return await host_requests() > done0
    await tls_support.until(host_ran_them)


async def test_sigstop_host_mid_traffic(tmp_path):
    async def test(host, backend, fe, loops):
        host.pause()
        try:
            fb0 = fe.stats.fallback_requests
            for loop in loops:
                await loop.more(3)
            assert fe.stats.fallback_requests > fb0  # redone / run in-process meanwhile
            st = await _backend_stats(backend)
            assert st["host_stalls"] >= 1, st
            lost = [e for e in map(json.loads, backend.log_path.read_text().splitlines())
                    if e["event"] == "device_lost"]
            assert lost and "vcrypto-host stalled" in lost[0]["error"], lost
        finally:
            host.resume()
        await _offloads_to_host(backend, fe, loops)

    await _stream(tmp_path, test)


async def test_sigstop_backend_mid_traffic(tmp_path):
    async def test(host, backend, fe, loops):
        attaches0 = fe.stats.attaches
        backend.pause()
        try:
            fb0 = fe.stats.fallback_requests
            for loop in loops:
                await loop.more(3)
            assert fe.stats.fallback_requests > fb0
            assert fe.stats.stalls >= 1 and not fe.attached, fe.stats
            assert "engine-backend stalled" in fe.last_detach_reason
        finally:
            backend.resume()

        async def reattached():
            return fe.attached and fe.stats.attaches > attaches0
        await tls_support.until(reattached, timeout_s=30)
        await _offloads_to_host(backend, fe, loops)

    await _stream(tmp_path, test)


# -- the data path alone (sessions opened before the stall: no control round trip) --------


def _keys():
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    sk = ec.generate_private_key(ec.SECP256R1())
    der = sk.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                           serialization.NoEncryption())
    return sk, der


async def _open(fe: Frontend):
    from vcrypto.engine import SessionMeta
    from vcrypto.ops import Alg, Op

    sk, der = _keys()
    seal = await fe.open_session(SessionMeta(Op.AEAD_SEAL, Alg.AES_128_GCM, b"k" * 16))
    sign = await fe.open_session(SessionMeta(Op.SIGN, Alg.ECDSA_SECP256R1_SHA256, der))
    await _burst(fe, seal, sign, sk, tasks=2)  # sids known: no control request from here on
    return seal, sign, sk


async def _burst(fe: Frontend, seal, sign, sk, tasks: int = 24) -> None:
    """Concurrent seal batches and signatures; every result checked."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from vcrypto.engine import SlotStatus

    async def one(k: int) -> None:
        if k % 2:
            items = [(bytes([k]) * (100 + i), i.to_bytes(12, "big"), b"aad") for i in range(16)]
            res = await fe.run(seal, items)
            assert [r[1] for r in res] == [AESGCM(b"k" * 16).encrypt(iv, p, a) for p, iv, a in items]
        else:
            msg = b"m" * k
            [(st, sig)] = await fe.run(sign, [(msg, b"", b"")])
            assert st is SlotStatus.OK
            sk.public_key().verify(sig, msg, ec.ECDSA(hashes.SHA256()))

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            for k in range(tasks):
                nursery.start_soon(one, k)


async def _burst_offloaded(fe: Frontend, seal, sign, sk) -> None:
    """A burst that runs at the daemons again: nothing falls back in-process."""
    fb, sub = fe.stats.fallback_requests, fe.stats.submitted
    await _burst(fe, seal, sign, sk)
    assert fe.stats.fallback_requests == fb and fe.stats.submitted > sub, fe.stats


async def test_hung_host_is_failed_by_its_oldest_request(tmp_path):
    host = engine_daemons.host(tmp_path).start()
    backend = engine_daemons.backend(tmp_path, host_socket=host.socket_path,
                                     extra=["--stall-timeout-s", str(HOST_STALL_S)]).start()
    try:
        # The frontend's own deadline is far longer: the backend must be the one to act.
        fe = Frontend(backend.socket_path, reconnect_interval_s=0.1, stall_timeout_s=10.0)
        seal, sign, sk = await _open(fe)
        host.pause()
        try:
            fb0 = fe.stats.fallback_requests
            await _burst(fe, seal, sign, sk)
            assert fe.stats.fallback_requests > fb0 and fe.stats.stalls == 0, fe.stats
            st = await _backend_stats(backend)
            assert st["host_stalls"] == 1 and not st["device_up"], st
            assert "vcrypto-host stalled: oldest request outstanding" in backend.log_path.read_text()
        finally:
            host.resume()

        async def offloading():  # a frontend reattaches when it has work
            await _burst(fe, seal, sign, sk, tasks=2)
            return fe.attached and (await _backend_stats(backend))["device_up"]
        await tls_support.until(offloading, timeout_s=30)
        await _burst_offloaded(fe, seal, sign, sk)
        await fe.aclose()
    finally:
        backend.stop()
        host.stop()


async def test_hung_backend_is_left_by_the_frontend_and_its_slots_abandoned(tmp_path):
    backend = engine_daemons.backend(tmp_path).start()
    try:
        # control_timeout_s is longer: the data-path deadline must be what acts
        fe = Frontend(backend.socket_path, reconnect_interval_s=0.1, stall_timeout_s=2.0,
                      control_timeout_s=10.0)
        seal, sign, sk = await _open(fe)
        old = fe._att
        backend.pause()
        try:
            fb0 = fe.stats.fallback_requests
            await _burst(fe, seal, sign, sk)
            assert fe.stats.fallback_requests > fb0 and fe.stats.stalls == 1, fe.stats
            assert "oldest request outstanding" in fe.last_detach_reason
            assert not old.alive and not fe.attached
            # what the stopped backend still owns was never handed out again
            assert len(old.free_slots) < old.region.geometry.slot_count
        finally:
            backend.resume()

        async def reattached():
            await _burst(fe, seal, sign, sk, tasks=2)
            return fe.attached and fe._att.gen > old.gen
        await tls_support.until(reattached, timeout_s=30)
        await _burst_offloaded(fe, seal, sign, sk)
        await fe.aclose()
    finally:
        backend.stop()


async def test_a_slow_host_that_keeps_completing_is_not_a_stall(tmp_path):
    """A backlog deeper than the deadline in front of a host that keeps
    completing: the oldest request waits longer than ``--stall-timeout-s``
    (queued at the backend behind a 16-entry device queue and a one-at-a-time
    25 ms resource), yet requests complete all along, so nothing is failed
    and nothing falls back."""
    import yaml

    pool = {"resources": [{"name": "slow", "kind": "simulated", "parallelism": 1,
                           "max_inflight": 1, "default_latency_us": 25000}]}
    cfg = tmp_path / "host.yaml"
    cfg.write_text(yaml.safe_dump({"pool": pool}))
    host = engine_daemons.host(tmp_path, config=str(cfg)).start()
    backend = engine_daemons.backend(tmp_path, host_socket=host.socket_path,
                                     extra=["--stall-timeout-s", "0.5", "--queue-size", "16"]).start()
    try:
        fe = Frontend(backend.socket_path, stall_timeout_s=30.0)
        seal, sign, sk = await _open(fe)
        t0 = trio.current_time()
        await _burst(fe, seal, sign, sk, tasks=8)  # 4 x 16 seals + 4 signs, 25 ms each, one at a time
        elapsed = trio.current_time() - t0
        st = await _backend_stats(backend)
        assert st["host_stalls"] == 0 and st["device_up"], st
        assert elapsed > 1.0  # so the last request waited > 2 x the deadline
        assert (fe.stats.fallback_requests, fe.stats.redone_requests, fe.stats.stalls) == (0, 0, 0), fe.stats
        await fe.aclose()
    finally:
        backend.stop()
        host.stop()

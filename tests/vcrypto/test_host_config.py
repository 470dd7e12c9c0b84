"""Host config validation and the daemon's CLI behaviour on bad input, plus a
pool whose only resource always fails: requests get an error status, the
device and the host keep serving."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import trio
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from host_refcheck import der_of, ecdh_peer
from vcrypto.driver import Driver, Item, PayloadPool, SessionParams
from vcrypto.host.config import HostConfigError, parse_config
from vcrypto.ops import Alg, Op
from vcrypto.wire import virtio_crypto as vc


@pytest.mark.parametrize("raw, message", [
    ({"fifoo": True}, "fifoo: unknown key"),
    ({"fifo": "yes"}, "fifo: expected true or false"),
    ({"poll": {"mode": "spin"}}, "poll.mode: expected 'doorbell' or 'adaptive'"),
    ({"poll": {"spin_us": "fast"}}, "poll.spin_us: expected a number"),
    ({"limits": {"max_queues": -1}}, "limits.max_queues: must be >= 0"),
    ({"limits": {"max_sessions": 3}}, "limits.max_sessions: unknown key"),
    ({"keys_dir": "/nonexistent/dir"}, "keys_dir: /nonexistent/dir is not a directory"),
    ({"bad_input_status": "invalid"}, "bad_input_status: expected one of err, badmsg, key_rejected"),
    ({"bad_input_status": 2}, "bad_input_status: expected one of"),
    ([1, 2], "<root>: expected a mapping"),
])
def test_config_errors_name_the_path(raw, message):
    with pytest.raises(HostConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_config(raw)


def test_config_defaults():
    cfg = parse_config({"poll": {"mode": "adaptive"}, "limits": {"max_devices": 2}})
    assert cfg.poll.mode == "adaptive" and cfg.poll.spin_us == 50.0
    assert cfg.limits.max_devices == 2 and cfg.limits.max_sessions_per_device == 1024
    assert cfg.fifo is False   # completions are matched by id; FIFO is opt-in
    assert cfg.bad_input_status == "key_rejected"   # a peer key off the curve is not a device failure


def test_daemon_rejects_bad_config(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("poll: {mode: turbo}\n")
    proc = subprocess.run([sys.executable, "-m", "vcrypto.host", "--socket",
                           str(tmp_path / "s.sock"), "--config", str(cfg)],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert "poll.mode" in proc.stderr
    cfg.write_text("pool: {resources: [{name: x, kind: gpu}]}\n")
    proc = subprocess.run([sys.executable, "-m", "vcrypto.host", "--socket",
                           str(tmp_path / "s.sock"), "--config", str(cfg)],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "pool.resources[0].kind" in proc.stderr, proc.stderr


async def test_failing_resource_never_crashes_the_device(start_host):
    host = start_host({"pool": {
        "resources": [{"name": "broken", "kind": "simulated", "capabilities": ["ecdh:*"],
                       "faults": {"error_rate": 1.0}}],
        "retry": {"max_attempts": 2, "timeout_s": 2.0}}})
    async with await Driver.attach(host.socket_path) as drv:
        sid = await drv.create_session(SessionParams(Op.ECDH, Alg.X25519))
        aead = await drv.create_session(SessionParams(Op.AEAD_SEAL, Alg.AES_128_GCM, key=bytes(16)))
        pool = await PayloadPool.create(drv)
        _, pub = ecdh_peer(Alg.X25519)
        with trio.fail_after(30):
            results = await pool.run([Item(sid, Op.ECDH, Alg.X25519, pub)] * 4
                                     + [Item(aead, Op.AEAD_SEAL, Alg.AES_128_GCM, b"x", os.urandom(12))])
        assert [r.status for r in results[:4]] == [vc.VIRTIO_CRYPTO_ERR] * 4
        assert results[4].status == vc.VIRTIO_CRYPTO_NOTSUPP    # no capable resource at all
        stats = await drv.stats()
        assert stats["device"]["resource_faults"] == 4
        caps = await drv.capabilities()        # the pool's capabilities, not the vocabulary's
        assert caps["capabilities"] == ["ecdh:SecP256r1MLKEM768", "ecdh:X25519MLKEM768",
                                        "ecdh:secp256r1", "ecdh:secp384r1", "ecdh:x25519"]
    assert host.alive()


@pytest.mark.parametrize("bad_input_status, want", [
    ("key_rejected", vc.VIRTIO_CRYPTO_KEY_REJECTED),
    ("badmsg", vc.VIRTIO_CRYPTO_BADMSG),
])
async def test_request_faults_and_device_faults_get_distinct_statuses(start_host,
                                                                      bad_input_status, want):
    """A peer key off the curve is the request's fault (bad_input_status); a
    tag mismatch or a too-short record is BADMSG; a resource that fails every
    attempt is ERR, the device's fault; an unknown session INVSESS."""
    host = start_host({"bad_input_status": bad_input_status, "pool": {
        "resources": [{"name": "soft", "kind": "openssl", "capabilities": ["aead_open:*", "ecdh:*"]},
                      {"name": "broken", "kind": "simulated", "capabilities": ["sign:*"],
                       "faults": {"error_rate": 1.0}}],
        "retry": {"max_attempts": 2, "timeout_s": 2.0}}})
    async with await Driver.attach(host.socket_path) as drv:
        ecdh = await drv.create_session(SessionParams(Op.ECDH, Alg.SECP256R1))
        key = bytes(range(16))
        open_ = await drv.create_session(SessionParams(Op.AEAD_OPEN, Alg.AES_128_GCM, key=key))
        sign = await drv.create_session(SessionParams(Op.SIGN, Alg.ED25519,
                                                      key=der_of(Alg.ED25519)))
        iv = os.urandom(12)
        ct = bytearray(AESGCM(key).encrypt(iv, b"record", None))
        good_ct = bytes(ct)
        ct[-1] ^= 1
        _, pub = ecdh_peer(Alg.SECP256R1)
        pool = await PayloadPool.create(drv)
        with trio.fail_after(30):
            results = await pool.run([
                Item(ecdh, Op.ECDH, Alg.SECP256R1, b"\x04" + b"\x01" * 64),   # not on the curve
                Item(open_, Op.AEAD_OPEN, Alg.AES_128_GCM, bytes(ct), iv),      # tag mismatch
                Item(open_, Op.AEAD_OPEN, Alg.AES_128_GCM, b"short", iv),       # shorter than a tag
                Item(sign, Op.SIGN, Alg.ED25519, b"msg"),                       # device failure
                Item(ecdh, Op.ECDH, Alg.SECP256R1, pub),
                Item(open_, Op.AEAD_OPEN, Alg.AES_128_GCM, good_ct, iv),
                Item(0x7777, Op.ECDH, Alg.SECP256R1, pub),                      # unknown session
            ])
        assert [r.status for r in results] == [
            want, vc.VIRTIO_CRYPTO_BADMSG, vc.VIRTIO_CRYPTO_BADMSG, vc.VIRTIO_CRYPTO_ERR,
            vc.VIRTIO_CRYPTO_OK, vc.VIRTIO_CRYPTO_OK, vc.VIRTIO_CRYPTO_INVSESS]
        assert results[5].data == b"record"
        stats = await drv.stats()
        assert stats["device"]["resource_faults"] == 1
    assert host.alive()

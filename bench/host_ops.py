"""ops/s per operation through ``vcrypto-host`` vs `cryptography` in-process.

    .venv/bin/python bench/host_ops.py [--seconds 1.0] [--window 64] [--pool openssl|workers]
                                       [--poll adaptive|doorbell] [--config host.yaml]

Starts a real ``vcrypto-host`` subprocess on a temporary unix socket, attaches
the poll-mode driver, and for each op runs requests through the host with
``window`` in flight (batched: one kick/call per drained batch) for about
``--seconds``; then runs the same op calling `cryptography` directly in this
process, one at a time, for the same time. Prints one table with both rates
and their ratio (host / direct), measured in the same run, plus the host's
kicks+calls per request and the host CPU seconds per request.

Machine speed drifts between runs here (notes/ipc-costs.md): compare the
ratios of one run, not absolute numbers across runs.

Host CPU per request includes everything the host process spends: the data
path (parse the chain, run the job, write the result), its poll passes (in
``adaptive`` mode, the spinning after a batch) and the control path. With
the openssl pool the small ops run inline in the drain pass (no task per
request). Measured 2026-11-25 (loaded machine, medians of 3 runs, before ->
after the inline fast path): AES-128-GCM 256 B 141 -> 53 us (adaptive) and
94 -> 47 us (doorbell); 16 KiB 142 -> 68 / 103 -> 57; ECDSA P-256 163 ->
110 / 163 -> 116. The rest is per-request Python in the data path (cProfile,
AES 256 B: chain walk and parse ~40% of the host's loop, scheduler and
crypto ~20%, result write ~12%); and the driver here, a single Python
process, feeds the host only a few requests per pass.
"""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa, x25519  # noqa: E402
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305  # noqa: E402

from vcrypto.driver import Driver, Item, PayloadPool, SessionParams  # noqa: E402
from vcrypto.ops import Alg, Op  # noqa: E402


def _der(key) -> bytes:
    return key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def cases():
    """(label, SessionParams, make_src(), iv?, direct callable)"""
    k16, k32 = os.urandom(16), os.urandom(32)
    iv = os.urandom(12)
    p256 = ec.generate_private_key(ec.SECP256R1())
    rsa2k = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ed = ed25519.Ed25519PrivateKey.generate()
    x_peer = x25519.X25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    p_peer = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    small, big = os.urandom(256), os.urandom(16384)
    msg = os.urandom(64)
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)

    def x25519_direct():
        own = x25519.X25519PrivateKey.generate()
        own.exchange(x25519.X25519PublicKey.from_public_bytes(x_peer))
        own.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    def p256_direct():
        own = ec.generate_private_key(ec.SECP256R1())
        own.exchange(ec.ECDH(), ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), p_peer))
        own.public_key().public_bytes(serialization.Encoding.X962,
                                      serialization.PublicFormat.UncompressedPoint)

    def rsa_direct():
        sig = rsa2k.sign(msg, pss, hashes.SHA256())
        rsa2k.public_key().verify(sig, msg, pss, hashes.SHA256())   # the host re-verifies too

    return [
        ("aead_seal aes-128-gcm 256B", SessionParams(Op.AEAD_SEAL, Alg.AES_128_GCM, k16), small, iv,
         lambda: AESGCM(k16).encrypt(iv, small, None)),
        ("aead_seal aes-128-gcm 16KiB", SessionParams(Op.AEAD_SEAL, Alg.AES_128_GCM, k16), big, iv,
         lambda: AESGCM(k16).encrypt(iv, big, None)),
        ("aead_seal chacha20 16KiB", SessionParams(Op.AEAD_SEAL, Alg.CHACHA20_POLY1305, k32), big, iv,
         lambda: ChaCha20Poly1305(k32).encrypt(iv, big, None)),
        ("ecdh x25519", SessionParams(Op.ECDH, Alg.X25519), x_peer, b"", x25519_direct),
        ("ecdh secp256r1", SessionParams(Op.ECDH, Alg.SECP256R1), p_peer, b"", p256_direct),
        ("sign ecdsa p-256", SessionParams(Op.SIGN, Alg.ECDSA_SECP256R1_SHA256, _der(p256)), msg, b"",
         lambda: p256.sign(msg, ec.ECDSA(hashes.SHA256()))),
        ("sign ed25519", SessionParams(Op.SIGN, Alg.ED25519, _der(ed)), msg, b"",
         lambda: ed.sign(msg)),
        ("sign rsa-2048 pss", SessionParams(Op.SIGN, Alg.RSA_PSS_RSAE_SHA256, _der(rsa2k)), msg, b"",
         rsa_direct),
    ]


def direct_rate(fn, seconds: float) -> float:
    n, t0 = 0, time.perf_counter()
    deadline = t0 + seconds
    while True:
        for _ in range(8):
            fn()
        n += 8
        now = time.perf_counter()
        if now >= deadline or n >= 200_000:
            return n / (now - t0)


async def host_rate(drv: Driver, pool: PayloadPool, params, src, iv, seconds, window):
    sid = await drv.create_session(params)
    item = Item(sid, params.op, params.alg, src, iv)
    await pool.run([item] * window, window=window)           # warm-up (keys cached)
    s0 = await drv.stats()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds and n < 200_000:
        batch = [item] * (window * 4)
        results = await pool.run(batch, window=window)
        bad = [r.status for r in results if not r.ok]
        if bad:
            raise SystemExit(f"{params!r}: host returned status {bad[0]}")
        n += len(batch)
    dt = time.perf_counter() - t0
    s1 = await drv.stats()
    await drv.close_session(sid)
    d0, d1 = s0["device"], s1["device"]
    notes = (d1["kicks"] - d0["kicks"] + d1["calls"] - d0["calls"]) / n
    cpu = (s1["host"]["cpu_s"] - s0["host"]["cpu_s"]) / n
    return n / dt, notes, cpu


async def main_async(args) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        sock = os.path.join(tmp, "host.sock")
        cmd = [sys.executable, "-m", "vcrypto.host", "--socket", sock, "--log-level", "WARNING"]
        config = args.config
        if config is None:
            config = os.path.join(tmp, "host.yaml")
            if args.pool == "workers":
                resource = "{name: procs, kind: workers, processes: 2}"
            else:
                resource = "{name: soft, kind: openssl, max_inflight: %d}" % args.window
            poll = "{mode: adaptive, spin_us: 2000}" if args.poll == "adaptive" \
                else "{mode: doorbell}"
            Path(config).write_text("poll: %s\npool:\n  resources:\n    - %s\n"
                                    % (poll, resource))
        cmd += ["--config", config]
        proc = subprocess.Popen(cmd, cwd=ROOT)
        try:
            for _ in range(200):
                try:
                    with socket.socket(socket.AF_UNIX) as s:
                        s.connect(sock)
                    break
                except OSError:
                    time.sleep(0.05)
            drv = await Driver.attach(sock)
            pool = await PayloadPool.create(drv, slot_bytes=33 * 1024, slots=args.window)
            rows = []
            for label, params, src, iv, direct in cases():
                h, notes, cpu = await host_rate(drv, pool, params, src, iv, args.seconds, args.window)
                d = direct_rate(direct, args.seconds)
                rows.append((label, h, d, h / d, notes, cpu * 1e6))
            await drv.aclose()
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    print(f"window={args.window} seconds/op={args.seconds} "
          f"config={args.config or f'default, pool={args.pool}, poll={args.poll}'}")
    print(f"{'op':30} {'host ops/s':>11} {'direct ops/s':>13} {'ratio':>7} "
          f"{'notif/req':>9} {'host CPU us/req':>15}")
    for label, h, d, ratio, notes, cpu in rows:
        print(f"{label:30} {h:11.0f} {d:13.0f} {ratio:7.2f} {notes:9.4f} {cpu:15.1f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--window", type=int, default=64)
    ap.add_argument("--config", help="host YAML config (default: adaptive poll, one resource)")
    ap.add_argument("--pool", choices=["openssl", "workers"], default="openssl",
                    help="resource of the default config: in-process openssl, or 2 worker processes")
    ap.add_argument("--poll", choices=["adaptive", "doorbell"], default="adaptive",
                    help="poll mode of the default config (adaptive: spin 2 ms after a batch)")
    args = ap.parse_args(argv)
    trio.run(main_async, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Per-op latency (p50/p99) and ops/s through the vcrypto engine vs in-process.

    .venv/bin/python bench/engine_ops.py [--seconds 1.0] [--tasks 32] [--no-host]

Starts a real ``vcrypto-host`` and a ``vcrypto-engine-backend`` subprocess on
temporary unix sockets, attaches an engine ``Frontend`` in this process, and
for each op measures, in one run:

- *latency*: one request at a time through the engine (frontend -> trans ring
  -> backend -> data virtqueue -> host -> back), p50 and p99;
- *throughput*: ``--tasks`` concurrent trio tasks, AEAD ones submitting
  pipelines of 16 records per opdone, for about ``--seconds``;
- the same op in-process (``cryptography``, one at a time): p50, p99, ops/s.

``--no-host`` runs the backend with its local device instead of a host:
the cost of the engine alone (frontend + trans ring + backend, one hop pair).

Machine speed drifts between runs here (notes/ipc-costs.md): compare the
columns of one run, not numbers across runs. CPU per op includes all three
processes (this one, the backend, the host); ``split`` is the same per
process: this one (the frontend) / backend / host (``--no-host``: frontend /
backend). ``--only aes`` runs the AEAD cases alone (1, 4, 8, 16 KiB: the
offload's break-even against the in-process column).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "engine"))

from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa, x25519  # noqa: E402

import engine_daemons  # noqa: E402
from vcrypto.engine import InlineSession  # noqa: E402
from vcrypto.engine import SessionMeta, SlotStatus  # noqa: E402
from vcrypto.engine.frontend import Frontend  # noqa: E402
from vcrypto.ops import Alg, Op  # noqa: E402


def _der(key) -> bytes:
    return key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def cases():
    """(label, SessionMeta, item, pipeline depth for the throughput run)"""
    iv = os.urandom(12)
    x_peer = x25519.X25519PrivateKey.generate().public_key().public_bytes_raw()
    p_peer = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    msg = os.urandom(130)  # a TLS 1.3 CertificateVerify input is ~130 bytes
    return [
        ("aes-128-gcm seal 16 KiB", SessionMeta(Op.AEAD_SEAL, Alg.AES_128_GCM, os.urandom(16)),
         (os.urandom(16384), iv, b"hdr05"), 16),
        ("aes-128-gcm seal 8 KiB", SessionMeta(Op.AEAD_SEAL, Alg.AES_128_GCM, os.urandom(16)),
         (os.urandom(8192), iv, b"hdr05"), 16),
        ("aes-128-gcm seal 4 KiB", SessionMeta(Op.AEAD_SEAL, Alg.AES_128_GCM, os.urandom(16)),
         (os.urandom(4096), iv, b"hdr05"), 16),
        ("aes-128-gcm seal 1 KiB", SessionMeta(Op.AEAD_SEAL, Alg.AES_128_GCM, os.urandom(16)),
         (os.urandom(1024), iv, b"hdr05"), 16),
        ("chacha20 seal 16 KiB", SessionMeta(Op.AEAD_SEAL, Alg.CHACHA20_POLY1305, os.urandom(32)),
         (os.urandom(16384), iv, b"hdr05"), 16),
        ("x25519 keygen+derive", SessionMeta(Op.ECDH, Alg.X25519), (x_peer, b"", b""), 1),
        ("p-256 keygen+derive", SessionMeta(Op.ECDH, Alg.SECP256R1), (p_peer, b"", b""), 1),
        ("ecdsa p-256 sign", SessionMeta(Op.SIGN, Alg.ECDSA_SECP256R1_SHA256,
                                         _der(ec.generate_private_key(ec.SECP256R1()))),
         (msg, b"", b""), 1),
        ("ed25519 sign", SessionMeta(Op.SIGN, Alg.ED25519,
                                     _der(ed25519.Ed25519PrivateKey.generate())), (msg, b"", b""), 1),
        ("rsa-2048 pss sign", SessionMeta(Op.SIGN, Alg.RSA_PSS_RSAE_SHA256,
                                          _der(rsa.generate_private_key(65537, 2048))),
         (msg, b"", b""), 1),
    ]


def _pct(samples: list[float], q: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(q * len(s)))] * 1e6


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


def _proc_cpu(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def bench(fe: Frontend, pids: list[int], seconds: float, tasks: int,
                only: str = "") -> list[dict]:
    rows = []
    for label, meta, item, depth in cases():
        if only and only not in label:
            continue
        h = await fe.open_session(meta)
        [(st, _)] = await fe.run(h, [item])  # warm: session created at the host
        assert st is SlotStatus.OK, (label, st)
        # latency, one at a time
        lat: list[float] = []
        end = time.perf_counter() + seconds / 2
        while time.perf_counter() < end and len(lat) < 20000:
            t0 = time.perf_counter()
            await fe.run(h, [item])
            lat.append(time.perf_counter() - t0)
        # throughput, concurrent tasks
        done = 0
        be0 = await fe.backend_stats()
        bells0 = fe.stats.doorbells
        cpu0 = [_cpu()] + [_proc_cpu(p) for p in pids]
        t0 = time.perf_counter()
        stop = t0 + seconds

        async def worker():
            nonlocal done
            batch = [item] * depth
            while time.perf_counter() < stop:
                res = await fe.run(h, batch)
                done += len(res)

        async with trio.open_nursery() as n:
            for _ in range(tasks):
                n.start_soon(worker)
        wall = time.perf_counter() - t0
        per_proc = [b - a for a, b in zip(cpu0, [_cpu()] + [_proc_cpu(p) for p in pids])]
        cpu = sum(per_proc)
        be1 = await fe.backend_stats()
        # doorbells to the backend + eventfd wakes of this frontend + kicks to
        # and calls from the host, per request
        notif = (fe.stats.doorbells - bells0 + be1["calls"] - be0["calls"]
                 + be1["host_kicks"] - be0["host_kicks"] + be1["host_calls"] - be0["host_calls"])
        await fe.close_session(h, linger=False)
        # in-process
        local = InlineSession(meta)
        src, iv, aad = item
        inl: list[float] = []
        t1 = time.perf_counter()
        end = t1 + seconds / 2
        while time.perf_counter() < end and len(inl) < 200000:
            a = time.perf_counter()
            local.perform(src, iv, aad)
            inl.append(time.perf_counter() - a)
        rows.append(dict(op=label, e_p50=_pct(lat, .5), e_p99=_pct(lat, .99), e_ops=done / wall,
                         e_cpu_us=cpu / max(done, 1) * 1e6, notif=notif / max(done, 1),
                         split_us=[c / max(done, 1) * 1e6 for c in per_proc],
                         i_p50=_pct(inl, .5), i_p99=_pct(inl, .99), i_ops=len(inl) / sum(inl)))
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=1.0, help="per op and mode")
    p.add_argument("--tasks", type=int, default=32, help="concurrent tasks in the throughput run")
    p.add_argument("--no-host", action="store_true",
                   help="backend computes itself: the engine's own overhead")
    p.add_argument("--only", default="", help="ops whose label contains this, e.g. 'aes'")
    args = p.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="engine-bench-"))
    if args.no_host:
        daemons = [engine_daemons.backend(tmp).start()]
    else:
        stack = engine_daemons.EngineStack(tmp).start()
        daemons = [stack.backend, stack.host]
    try:
        fe = Frontend(daemons[0].socket_path, linger_s=0)
        rows = trio.run(bench, fe, [d.pid for d in daemons], args.seconds, args.tasks, args.only)
        fallbacks = fe.stats.fallback_requests
    finally:
        for d in daemons:
            d.stop()
    where = "backend only (--no-host)" if args.no_host else "backend + vcrypto-host"
    print(f"engine ({where}) vs in-process, {os.cpu_count()} CPUs, {args.tasks} tasks, "
          f"AEAD pipelines of 16 per opdone (fallbacks during the run: {fallbacks})")
    hdr = (f"{'op':26} {'engine p50 us':>13} {'p99 us':>8} {'ops/s':>8} {'cpu us/op':>9} "
           f"{'split':>17} {'notif/op':>8} | "
           f"{'inproc p50 us':>13} {'p99 us':>8} {'ops/s':>8}")
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        print(f"{r['op']:26} {r['e_p50']:13.1f} {r['e_p99']:8.1f} {r['e_ops']:8.0f} "
              f"{r['e_cpu_us']:9.1f} {'/'.join(f'{c:.0f}' for c in r['split_us']):>17} {r['notif']:8.3f} | {r['i_p50']:13.1f} {r['i_p99']:8.1f} {r['i_ops']:8.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

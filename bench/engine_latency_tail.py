"""Worst request latency through the engine under a burst (sizes the stall deadline).

    python bench/engine_latency_tail.py [--procs 2] [--tasks 256] [--rounds 3]

Starts a real vcrypto-host + engine-backend, then ``--procs`` frontend
processes that each fire ``--tasks`` concurrent RSA-2048 signs (the slowest
op a handshake offloads) ``--rounds`` times, plus AEAD batches; every
process prints its max / p99 latency of one ``Frontend.run`` (including
the wait for free slots) and the max time one opdone stayed outstanding at
the engine (submit to completion: what the stall deadline bounds). The engine's stall deadline (``crypto.stall_timeout_s``) must sit
far above the max seen here on a loaded machine.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


async def _worker(sock: str, tasks: int, rounds: int) -> dict:
    import trio
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from vcrypto.engine import SessionMeta, SlotStatus
    from vcrypto.engine.frontend import Frontend
    from vcrypto.ops import Alg, Op

    fe = Frontend(sock)
    outstanding: list[float] = []   # per opdone: submit -> completion seen (what the deadline bounds)
    free = fe._free

    def timed_free(att, slots, j):
        t = att.sent_at.get(j)
        if t is not None:
            outstanding.append((time.monotonic_ns() - t) / 1e9)
        free(att, slots, j)
    fe._free = timed_free
    await fe.start()
    key = rsa.generate_private_key(65537, 2048).private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    sign = await fe.open_session(SessionMeta(Op.SIGN, Alg.RSA_PSS_RSAE_SHA256, key))
    seal = await fe.open_session(SessionMeta(Op.AEAD_SEAL, Alg.AES_128_GCM, b"k" * 16))
    lat: list[float] = []
    bad = 0

    async def one(k: int) -> None:
        nonlocal bad
        for _ in range(rounds):
            t0 = time.monotonic()
            if k % 4:
                res = await fe.run(sign, [(b"m" * 100, b"", b"")])
            else:
                res = await fe.run(seal, [(b"x" * 4000, b"i" * 12, b"a")] * 16)
            lat.append(time.monotonic() - t0)
            bad += sum(st is not SlotStatus.OK for st, _ in res)

    async with trio.open_nursery() as n:
        for k in range(tasks):
            n.start_soon(one, k)
    lat.sort()
    out = {"pid": os.getpid(), "requests": len(lat), "bad": bad,
           "run_max_s": round(lat[-1], 3), "run_p99_s": round(lat[int(0.99 * (len(lat) - 1))], 3),
           "outstanding_max_s": round(max(outstanding), 3),
           "fallback": fe.stats.fallback_requests, "submitted": fe.stats.submitted}
    await fe.aclose()
    return out


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--procs", type=int, default=2)
    p.add_argument("--tasks", type=int, default=256)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        import trio
        print(json.dumps(trio.run(_worker, a.worker, a.tasks, a.rounds)), flush=True)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        hs, bs = os.path.join(tmp, "host.sock"), os.path.join(tmp, "engine.sock")
        log = open(os.path.join(tmp, "log"), "wb")
        host = subprocess.Popen([sys.executable, "-m", "vcrypto.host", "--socket", hs],
                                cwd=REPO, stdout=log, stderr=log)
        procs = [host]
        try:
            while not os.path.exists(hs):
                time.sleep(0.05)
            be = subprocess.Popen([sys.executable, "-m", "vcrypto.engine.backend", "--socket", bs,
                                   "--host-socket", hs], cwd=REPO, stdout=log, stderr=log)
            procs.append(be)
            while not os.path.exists(bs):
                time.sleep(0.05)
            time.sleep(0.5)
            ws = [subprocess.Popen([sys.executable, __file__, "--worker", bs, "--tasks",
                                    str(a.tasks), "--rounds", str(a.rounds)],
                                   cwd=REPO, stdout=subprocess.PIPE, text=True)
                  for _ in range(a.procs)]
            for w in ws:
                out, _ = w.communicate(timeout=600)
                print(out.strip())
        finally:
            for pr in reversed(procs):
                pr.terminate()
                pr.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())

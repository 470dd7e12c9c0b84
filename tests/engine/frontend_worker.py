"""A frontend process for the multi-process tests: many concurrent trio tasks
submit mixed requests and check every result against `cryptography`.

    python frontend_worker.py SOCKET TASKS ROUNDS SEED [--fork]

Prints one JSON line: {"pid", "ok", "bad", "submitted", "fallback", ...}.
With --fork it runs once, forks, and parent and child each run again with
the same Frontend object (each must reattach on its own).
"""
from __future__ import annotations

import json
import os
import random
import sys

import trio
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from vcrypto.engine import ecdh_split
from vcrypto.engine import SessionMeta, SlotStatus
from vcrypto.engine.frontend import Frontend
from vcrypto.ops import Alg, Op


async def workload(fe: Frontend, tasks: int, rounds: int, seed: int) -> dict:
    rng = random.Random(seed)
    keys = [rng.randbytes(16) for _ in range(3)]
    seal = [await fe.open_session(SessionMeta(Op.AEAD_SEAL, Alg.AES_128_GCM, k)) for k in keys]
    sk = ec.generate_private_key(ec.SECP256R1())
    der = sk.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                           serialization.NoEncryption())
    sign = await fe.open_session(SessionMeta(Op.SIGN, Alg.ECDSA_SECP256R1_SHA256, der))
    ecdh = await fe.open_session(SessionMeta(Op.ECDH, Alg.X25519))
    counts = {"ok": 0, "bad": 0}

    async def task(r: random.Random):
        for _ in range(rounds):
            kind = r.random()
            if kind < 0.7:
                s = r.randrange(3)
                items = [(r.randbytes(r.choice([1, 200, 3000])), r.randbytes(12), r.randbytes(7))
                         for _ in range(r.randint(1, 20))]
                res = await fe.run(seal[s], items)
                good = [x[1] for x in res] == [AESGCM(keys[s]).encrypt(iv, p, a) for p, iv, a in items]
            elif kind < 0.85:
                msg = r.randbytes(100)
                [(st, sig)] = await fe.run(sign, [(msg, b"", b"")])
                try:
                    sk.public_key().verify(sig, msg, ec.ECDSA(hashes.SHA256()))
                    good = st is SlotStatus.OK
                except Exception:  # noqa: BLE001 - counted as a wrong result
                    good = False
            else:
                peer = x25519.X25519PrivateKey.generate()
                [(st, out)] = await fe.run(ecdh, [(peer.public_key().public_bytes_raw(), b"", b"")])
                own, shared = ecdh_split(Alg.X25519, out)
                good = st is SlotStatus.OK and peer.exchange(
                    x25519.X25519PublicKey.from_public_bytes(own)) == shared
            counts["ok" if good else "bad"] += 1

    with trio.fail_after(120):
        async with trio.open_nursery() as n:
            for _ in range(tasks):
                n.start_soon(task, random.Random(rng.random()))
    for h in seal + [sign, ecdh]:
        await fe.close_session(h, linger=False)
    return counts


def main() -> int:
    sock, tasks, rounds, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    fork = "--fork" in sys.argv
    fe = Frontend(sock, linger_s=0)
    out = trio.run(workload, fe, tasks, rounds, seed)
    if fork:
        pid = os.fork()
        out = trio.run(workload, fe, tasks, rounds, seed + (1 if pid == 0 else 2))
        if pid == 0:
            print(json.dumps({"pid": os.getpid(), "role": "child", **out, **vars(fe.stats)}), flush=True)
            os._exit(0)
        os.waitpid(pid, 0)
    print(json.dumps({"pid": os.getpid(), "role": "main", **out, **vars(fe.stats)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

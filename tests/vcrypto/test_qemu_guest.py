"""A real QEMU 7.2 guest (Debian's Linux 6.1, TCG) uses vcrypto-host as its
virtio-crypto device over vhost-user, while our own driver keeps working on
the same host.

What it proves (and how each part could fail):

* QEMU's vhost-user front end gets through its whole message sequence
  against the host (else QEMU exits or the guest has no device);
* the guest kernel's ``virtio_crypto`` driver registers ``cbc(aes)`` as
  ``virtio_crypto_aes_cbc`` and its self-test (the kernel's own AES-CBC
  vectors, 128/192/256-bit keys, through QEMU's CREATE_CRYPTO_SESSION and our
  host) passes: a wrong result here unregisters the algorithm;
* AF_ALG bound *by driver name* (no fallback to aes-generic possible) gives
  ciphertexts for 16 B ... 64 KiB equal to `cryptography`'s, computed here
  from the same key/iv/plaintext (random per run, passed on the kernel
  command line), and decrypts them back;
* the guest's virtio interrupt count rises, the host's metrics count the
  guest's requests and the split of its 64 KiB request into 16 KiB pieces;
* our own driver, attached to the same host, runs AES-CBC + HMAC-SHA1
  encrypt-then-MAC / verify-then-decrypt the whole time, checked against
  `cryptography`. Linux 6.1's virtio-crypto registers no hash, MAC or
  authenc algorithm, so the guest cannot offer authenc(hmac(sha1),cbc(aes))
  over virtio: the chain is tested from our driver.
"""
from __future__ import annotations

import hashlib
import os
import re
import time
import urllib.request

import pytest
import trio
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

import qemu_guest
from vcrypto.driver import Driver, Item, PayloadPool, SessionParams
from vcrypto.ops import Alg, Op

SIZES = [16, 64, 1024, 4096, 16384, 16400, 65536]
BOOT_GUARD_S = 150     # a hang guard only: boot to power-off takes 10-25 s here


def cbc_encrypt(key: bytes, iv: bytes, data: bytes) -> bytes:
    e = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    return e.update(data) + e.finalize()


def hmac_sha1(key: bytes, *parts: bytes) -> bytes:
    h = hmac.HMAC(key, hashes.SHA1())
    for p in parts:
        h.update(p)
    return h.finalize()


def completions(port: int) -> dict[tuple[str, str, str], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for m in re.finditer(r'^vcrypto_host_completions_total\{([^}]*)\} (\S+)$', text, re.M):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        out[(labels["op"], labels["alg"], labels["status"])] = float(m.group(2))
    m = re.search(r"^vcrypto_host_split_pieces_total (\S+)$", text, re.M)
    out[("split_pieces", "", "")] = float(m.group(1)) if m else 0.0
    return out


async def _driver_load(socket_path: str, stop: trio.Event, counts: dict) -> None:
    """Our own driver on the same host: chained AES-128-CBC + HMAC-SHA1 seal and
    open, verified against `cryptography`, until the guest has powered off."""
    ckey, mkey = os.urandom(16), os.urandom(20)
    alg = Alg.AES_128_CBC_HMAC_SHA1
    async with await Driver.attach(socket_path) as drv:
        pool = await PayloadPool.create(drv, slots=16)
        seal = await drv.create_session(SessionParams(Op.CHAIN_SEAL, alg, key=ckey + mkey))
        open_ = await drv.create_session(SessionParams(Op.CHAIN_OPEN, alg, key=ckey + mkey))
        for _ in range(100_000):          # bounded; ends when the guest is done
            iv, aad, msg = os.urandom(16), os.urandom(8), os.urandom(16 * (1 + counts["batches"] % 64))
            ct = cbc_encrypt(ckey, iv, msg)
            sealed = ct + hmac_sha1(mkey, aad, ct)
            with trio.fail_after(30):
                res = await pool.run([Item(seal, Op.CHAIN_SEAL, alg, msg, iv, aad),
                                      Item(open_, Op.CHAIN_OPEN, alg, sealed, iv, aad)])
            assert res[0].ok and res[0].data == sealed, res[0].status
            assert res[1].ok and res[1].data == msg, res[1].status
            counts["batches"] += 1
            if counts["guest_running"]:
                counts["during_guest"] += 1
            if stop.is_set():
                return
            await trio.sleep(0.05)


# the first run on a machine also downloads (~70 MB) and builds the guest
@pytest.mark.timeout(600)
async def test_qemu_guest_uses_vcrypto_host(start_host, tmp_path):
    guest = qemu_guest.build()
    host = start_host({"limits": {"max_request_bytes": 128 * 1024}}, metrics=True)
    key, iv, seed = os.urandom(32), os.urandom(16), int.from_bytes(os.urandom(3), "big") + 1
    append = (f"vc.driver=virtio_crypto_aes_cbc vc.key={key.hex()} vc.iv={iv.hex()} "
              f"vc.seed={seed} vc.sizes={','.join(map(str, SIZES))}")
    before = completions(host.metrics_port)
    counts = {"batches": 0, "during_guest": 0, "guest_running": False}
    stop = trio.Event()
    out = {}

    async def run_guest():
        # let our driver start first: it must keep serving while QEMU attaches
        with trio.fail_after(30):
            while counts["batches"] == 0:
                await trio.sleep(0.05)
        counts["guest_running"] = True
        t0 = time.monotonic()
        with trio.fail_after(BOOT_GUARD_S):
            proc = await trio.run_process(qemu_guest.qemu_command(guest, host.socket_path, append),
                                          capture_stdout=True, capture_stderr=True, check=False)
        out["seconds"] = time.monotonic() - t0
        counts["guest_running"] = False
        out["rc"] = proc.returncode
        out["stdout"] = proc.stdout.decode(errors="replace").replace("\r\n", "\n")
        out["stderr"] = proc.stderr.decode(errors="replace")
        stop.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(_driver_load, host.socket_path, stop, counts)
        nursery.start_soon(run_guest)

    console = out["stdout"]
    (tmp_path / "guest-console.txt").write_text(console + "\n--- stderr\n" + out["stderr"])
    print(f"guest boot to power-off: {out['seconds']:.1f} s")
    where = f"QEMU rc {out['rc']}; console in {tmp_path}/guest-console.txt:\n{console[-3000:]}"
    assert out["rc"] == 0 and "guest: done" in console, where
    assert host.alive(), host.log()

    # the virtio algorithm registered and passed the kernel's self-test
    crypto = [ln.removeprefix("crypto: ") for ln in console.splitlines() if ln.startswith("crypto: ")]
    block = "\n".join(crypto)
    assert re.search(r"name\s+: cbc\(aes\)\ndriver\s+: virtio_crypto_aes_cbc\n"
                     r"(?:.*\n)*?selftest\s+: passed", block), where

    # AF_ALG by driver name: the ciphertexts are `cryptography`'s ...
    got = dict((int(m.group(2)), m.group(1))
               for m in re.finditer(r"^sha256: ([0-9a-f]{64})\s+/tmp/ct\.(\d+)$", console, re.M))
    for n in SIZES:
        want = hashlib.sha256(cbc_encrypt(key, iv, qemu_guest.xorshift_stream(seed ^ n, n)))
        assert got.get(n) == want.hexdigest(), f"ciphertext of {n} bytes differs\n{where}"
    # ... and decrypt back to the plaintext in the guest
    for n in SIZES:
        assert f"afalg {n} enc ok dec ok" in console, where
    assert "guest: afalg rc 0" in console, where

    # the guest's device interrupted it (INTx: vectors=0)
    irq = {tag: int(m.group(1)) for tag in ("before", "after")
           for m in [re.search(rf"^irq-{tag}:\s+\d+:\s+(\d+).*virtio0$", console, re.M)] if m}
    assert irq.get("after", 0) > irq.get("before", 0) > 0, (irq, where)

    # the host counted the guest's requests (the self-test's and AF_ALG's)
    after = completions(host.metrics_port)
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    assert delta.get(("cipher_encrypt", "aes-256-cbc", "ok"), 0) >= len(SIZES), delta
    assert delta.get(("cipher_decrypt", "aes-256-cbc", "ok"), 0) >= len(SIZES), delta
    assert delta.get(("cipher_encrypt", "aes-128-cbc", "ok"), 0) >= 1, delta   # self-test
    # the 64 KiB requests went through the host as 16 KiB pieces (4 each way at least)
    assert delta[("split_pieces", "", "")] >= 8, delta
    # our own driver kept being served while the guest ran
    assert counts["during_guest"] >= 5, counts
    assert delta.get(("chain_seal", "aes-128-cbc-hmac-sha1", "ok"), 0) == counts["batches"]

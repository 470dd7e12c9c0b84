"""A QEMU guest's AF_ALG AES-CBC throughput: through vcrypto (the guest's
``virtio_crypto_aes_cbc`` -> QEMU 7.2 vhost-user -> vcrypto-host) vs the
guest's own software implementations (``cbc-aes-aesni``, ``cbc(aes-generic)``).

    .venv/bin/python bench/qemu_guest.py [--sizes 1024,4096,16384]

Boots the test guest of ``tests/vcrypto/test_qemu_guest.py`` (same cached
kernel and initramfs) against a vcrypto-host subprocess; in the guest,
``afalg`` encrypts one buffer per AF_ALG operation (accept, sendmsg, read)
for about 1 s of guest time per (driver, size) and reports operations and
seconds. Printed as MB/s and µs per operation.

Caveat, and it dominates: the guest runs under TCG (no KVM here), so its
"own software" AES is emulated instruction by instruction (AES-NI included),
while vcrypto's AES runs natively on the host; and every guest instruction
of the virtio path (the driver, the virtqueue, the interrupt) is emulated
too. The numbers say what a TCG guest gets, not what a KVM guest would.
HMAC-SHA1 and the AES-CBC+HMAC-SHA1 chain are not measured from the guest:
Linux 6.1's virtio-crypto registers no hash, MAC or authenc algorithm, so a
guest's authenc(hmac(sha1),cbc(aes)) never reaches vcrypto.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "vcrypto"))

import qemu_guest  # noqa: E402

DRIVERS = ["virtio_crypto_aes_cbc", "cbc-aes-aesni", "cbc(aes-generic)"]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1024,4096,16384")
    args = ap.parse_args()
    guest = qemu_guest.build()
    with tempfile.TemporaryDirectory() as tmp:
        sock = os.path.join(tmp, "host.sock")
        cfg = os.path.join(tmp, "host.yaml")
        Path(cfg).write_text("limits:\n  max_request_bytes: 131072\n")
        host = subprocess.Popen([sys.executable, "-m", "vcrypto.host", "--socket", sock,
                                 "--config", cfg, "--log-level", "WARNING"], cwd=ROOT,
                                env=dict(os.environ, PYTHONPATH=str(ROOT)))
        try:
            deadline = time.monotonic() + 15
            while not os.path.exists(sock):
                if time.monotonic() > deadline or host.poll() is not None:
                    raise SystemExit("vcrypto-host did not start")
                time.sleep(0.05)
            append = (f"vc.driver=virtio_crypto_aes_cbc vc.key={os.urandom(16).hex()} "
                      f"vc.iv={os.urandom(16).hex()} vc.seed=1 vc.sizes=16 "
                      f"vc.bench={','.join(DRIVERS)} vc.benchsizes={args.sizes}")
            t0 = time.monotonic()
            out = subprocess.run(qemu_guest.qemu_command(guest, sock, append), capture_output=True,
                                 text=True, timeout=600).stdout.replace("\r\n", "\n")
            wall = time.monotonic() - t0
        finally:
            host.terminate()
            host.wait(timeout=10)
    rows = re.findall(r"^afalg bench (\S+) (\d+) (\d+) ([\d.]+)$", out, re.M)
    if not rows:
        print(out[-3000:])
        return 1
    load = open("/proc/loadavg").read().split()[0]
    print(f"guest AF_ALG AES-128-CBC encrypt, one buffer per operation (QEMU 7.2 TCG, "
          f"guest {guest.version}; run took {wall:.0f} s wall, load {load})")
    print(f"{'driver':24} {'size':>6} {'ops':>6} {'MB/s':>8} {'us/op':>9}")
    for driver, size, ops, secs in rows:
        size, ops, secs = int(size), int(ops), float(secs)
        print(f"{driver:24} {size:6} {ops:6} {size * ops / secs / 1e6:8.2f} "
              f"{secs / ops * 1e6:9.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

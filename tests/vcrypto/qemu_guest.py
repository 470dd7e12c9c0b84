"""Build and boot the QEMU test guest (used by test_qemu_guest.py and
bench/qemu_guest.py).

The guest is a Debian ``linux-image-*-amd64`` kernel (the version
``linux-image-amd64`` depends on, fetched with ``apt-get download`` and
unpacked with ``dpkg -x``, never installed) and a busybox-static initramfs
holding the virtio + AF_ALG modules (in ``depmod`` order), ``guest/init.sh``
as /init and ``guest/afalg.c`` built with ``gcc -static``. Everything is
cached under ``.cache/qemu-guest/`` in the repository (gitignored); it is
rebuilt when the kernel version or one of the guest sources changes.

QEMU 7.2 runs under TCG (KVM is not available on CI machines) with the
vhost-user crypto device, ``vectors=0`` (with MSI-X QEMU 7.2 crashes under
TCG when the guest starts the device) and guest RAM in a shared memfd so the
host can map it (notes: serving a QEMU guest's virtio-crypto device).
"""
from __future__ import annotations

import dataclasses
import gzip
import hashlib
import lzma
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache" / "qemu-guest"
GUEST_SRC = Path(__file__).resolve().parent / "guest"
#: what /init loads (their dependencies come first, from modules.dep);
#: aesni_intel is the guest's own AES (cbc-aes-aesni), the bench's baseline
MODULES = ["virtio_pci", "virtio_crypto", "algif_skcipher", "algif_aead", "aesni_intel"]
BUILD_VERSION = "2"     # bump when the layout below changes


@dataclasses.dataclass(frozen=True)
class Guest:
    kernel: Path
    initrd: Path
    version: str


def _run(args: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(args, check=True, capture_output=True, text=True, **kw)


def kernel_package() -> str:
    """The linux-image-<version>-amd64 package the archive offers now."""
    for attempt in range(2):
        out = subprocess.run(["apt-cache", "depends", "linux-image-amd64"],
                             capture_output=True, text=True).stdout
        m = re.search(r"Depends: (linux-image-[0-9][^\s]*-amd64)\b", out)
        if m:
            return m.group(1)
        if attempt == 0:       # a fresh machine may have no package lists yet
            subprocess.run(["apt-get", "update", "-qq"], check=True)
    raise RuntimeError(f"apt-cache depends linux-image-amd64 names no kernel:\n{out}")


def _source_digest(package: str) -> str:
    h = hashlib.sha256(f"{BUILD_VERSION} {package} {' '.join(MODULES)}".encode())
    for name in ("afalg.c", "init.sh"):
        h.update((GUEST_SRC / name).read_bytes())
    return h.hexdigest()[:16]


def _module_order(root: Path, version: str) -> list[str]:
    """Module files (relative to the modules dir) of MODULES and their
    dependencies, each after everything it depends on."""
    moddir = root / "lib" / "modules" / version
    deps: dict[str, list[str]] = {}
    for line in (moddir / "modules.dep").read_text().splitlines():
        path, _, rest = line.partition(":")
        deps[path] = rest.split()
    by_name = {Path(p).name.split(".ko")[0].replace("-", "_"): p for p in deps}
    builtin = {Path(line).name.split(".ko")[0].replace("-", "_")
               for line in (moddir / "modules.builtin").read_text().splitlines()}
    order: list[str] = []

    def visit(path: str) -> None:
        if path in order:
            return
        for dep in reversed(deps[path]):   # modules.dep lists the deepest last
            visit(dep)
        order.append(path)

    for name in MODULES:
        if name in by_name:
            visit(by_name[name])
        elif name not in builtin:
            raise RuntimeError(f"kernel {version} has no module {name}")
    return order


def _vmlinux(bzimage: Path) -> bytes:
    """The ELF kernel inside the bzImage (Debian compresses it with xz). QEMU
    boots it through its PVH entry point (Debian builds CONFIG_PVH): no
    decompression under TCG, which halves boot to power-off (measured 21 ->
    12 s wall at load 7). Falls back to the bzImage itself."""
    data = bzimage.read_bytes()
    start = data.find(b"\xfd7zXZ\x00")
    if start >= 0:
        try:
            elf = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data[start:])
        except lzma.LZMAError:
            elf = b""
        if elf[:4] == b"\x7fELF":
            return elf
    return data


def build(log=print) -> Guest:
    """The cached guest, built first if missing or stale."""
    package = kernel_package()
    version = package.removeprefix("linux-image-")
    digest = _source_digest(package)
    kernel, initrd, stamp = CACHE / "vmlinux", CACHE / "initrd.gz", CACHE / "stamp"
    if stamp.exists() and stamp.read_text() == digest and kernel.exists() and initrd.exists():
        return Guest(kernel, initrd, version)
    t0 = time.monotonic()
    CACHE.mkdir(parents=True, exist_ok=True)
    debdir = CACHE / "deb"
    debs = sorted(debdir.glob(f"{package}_*.deb")) if debdir.exists() else []
    if not debs:
        shutil.rmtree(debdir, ignore_errors=True)
        debdir.mkdir()
        log(f"qemu guest: apt-get download {package}")
        _run(["apt-get", "download", package], cwd=debdir)
        debs = sorted(debdir.glob(f"{package}_*.deb"))
    root = CACHE / "root"
    shutil.rmtree(root, ignore_errors=True)
    _run(["dpkg", "-x", str(debs[-1]), str(root)])
    # The .deb ships no modules.dep: build it for the unpacked tree.
    _run(["depmod", "-b", str(root), version])
    order = _module_order(root, version)
    moddir = root / "lib" / "modules" / version
    initramfs = CACHE / "initramfs"
    shutil.rmtree(initramfs, ignore_errors=True)
    (initramfs / "bin").mkdir(parents=True)
    (initramfs / "modules").mkdir()
    shutil.copy2("/bin/busybox", initramfs / "bin" / "busybox")
    for path in order:
        shutil.copy2(moddir / path, initramfs / "modules" / Path(path).name)
    (initramfs / "modules.load").write_text("\n".join(Path(p).name for p in order) + "\n")
    shutil.copy2(GUEST_SRC / "init.sh", initramfs / "init")
    os.chmod(initramfs / "init", 0o755)
    _run(["gcc", "-static", "-O2", "-Wall", "-o", str(initramfs / "afalg"),
          str(GUEST_SRC / "afalg.c")])
    files = sorted(str(p.relative_to(initramfs)) for p in initramfs.rglob("*"))
    cpio = subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], cwd=initramfs, check=True,
                          input="\n".join(["."] + files).encode(), capture_output=True).stdout
    initrd.write_bytes(gzip.compress(cpio, 6))
    kernel.write_bytes(_vmlinux(root / "boot" / f"vmlinuz-{version}"))
    shutil.rmtree(root)
    stamp.write_text(digest)
    log(f"qemu guest: built {version} initramfs ({initrd.stat().st_size} bytes, "
        f"modules {', '.join(Path(p).stem for p in order)}) in {time.monotonic() - t0:.1f} s")
    return Guest(kernel, initrd, version)


def qemu_command(guest: Guest, socket_path: str, append: str, *, mem_mb: int = 256) -> list[str]:
    """The QEMU 7.2 command line serving the guest's virtio-crypto device
    from the vhost-user socket (the one README shows)."""
    return [
        "qemu-system-x86_64", "-nodefaults", "-accel", "tcg", "-cpu", "max", "-m", str(mem_mb),
        "-object", f"memory-backend-memfd,id=mem0,size={mem_mb}M,share=on",
        "-machine", "pc,memory-backend=mem0",
        "-chardev", f"socket,id=vuc0,path={socket_path}",
        "-object", "cryptodev-vhost-user,id=c0,chardev=vuc0",
        "-device", "virtio-crypto-pci,cryptodev=c0,vectors=0",
        "-kernel", str(guest.kernel), "-initrd", str(guest.initrd),
        # mitigations=off: page-table isolation & co. cost TCG dearly
        # (measured: guest boot 16 -> 6 s at load 10, with -nodefaults)
        "-append", f"console=ttyS0 loglevel=3 panic=-1 mitigations=off {append}",
        "-nic", "none", "-display", "none", "-serial", "stdio", "-monitor", "none",
        "-no-reboot",
    ]


def xorshift_stream(seed: int, n: int) -> bytes:
    """The guest's plaintext generator (afalg.c ``stream``)."""
    x = seed & 0xFFFFFFFF or 1
    out = bytearray(n)
    for i in range(n):
        x ^= (x << 13) & 0xFFFFFFFF
        x ^= x >> 17
        x ^= (x << 5) & 0xFFFFFFFF
        out[i] = x & 0xFF
    return bytes(out)

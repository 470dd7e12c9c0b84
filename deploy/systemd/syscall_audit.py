"""Check the units' syscall filter against what the processes really call.

``systemd-analyze security`` rates a unit's options; it cannot tell whether
the processes still work under them. This runs ``vcproxy run`` (supervisor,
vcrypto-host with its `workers` resource, engine-backend, 2 workers) under
``strace -f``, drives TLS handshakes and requests through it, and reports,
per process kind, every syscall outside what the units allow
(``SystemCallFilter=@system-service``; the daemons also ``~@resources``)
and every mapping that is writable and executable at once (refused by
``MemoryDenyWriteExecute=yes``).

    .venv/bin/python deploy/systemd/syscall_audit.py     # needs strace, systemd-analyze

Exit status 0 when nothing is outside. Not part of ``make test`` (strace
slows everything ~5x); run it after changing what the processes do.
"""
from __future__ import annotations

import collections
import datetime
import json
import re
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

HANDSHAKES = 20


def _groups() -> dict[str, set[str]]:
    text = subprocess.run(["systemd-analyze", "syscall-filter", "--no-pager"], capture_output=True,
                          text=True, check=True).stdout
    groups: dict[str, set[str]] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("@"):
            current = line.split()[0]
            groups[current] = set()
        elif current and line.strip() and not line.strip().startswith("#"):
            groups[current].add(line.strip())
    return groups


def _expand(groups: dict[str, set[str]], name: str) -> set[str]:
    out: set[str] = set()
    for member in groups.get(name, ()):
        out |= _expand(groups, member) if member.startswith("@") else {member}
    return out


def _cert(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .sign(key, hashes.SHA256()))
    (directory / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                          serialization.NoEncryption()))
    return directory / "cert.pem", directory / "key.pem"


def _kind(trace: str) -> str:
    argv = re.findall(r'execve\("[^"]*", \[([^\]]*)\]', trace)
    last = argv[-1] if argv else ""
    for needle, kind in (("vcrypto.host.resources", "host workers resource"), ("vcrypto.host", "vcrypto-host"),
                         ("vcrypto.engine.backend", "engine-backend"), ('"worker"', "vcproxy worker"),
                         ('"demo-upstream"', "demo upstream"), ('"run"', "supervisor")):
        if needle in last:
            return kind
    return "thread"   # a thread (or fork before exec): folded into its process below


def run(tmp: Path) -> dict[str, set[str]]:
    cert, key = _cert(tmp)
    upstream = subprocess.Popen([sys.executable, "-m", "vcproxy", "demo-upstream", "--port", "0"],
                                stdout=subprocess.PIPE, text=True)
    port = json.loads(upstream.stdout.readline())["port"]
    config = {"listeners": [{"port": 0, "tls": {"certificates": [{"cert": str(cert), "key": str(key)}]}}],
              "upstreams": {"demo": {"servers": [f"127.0.0.1:{port}"]}}, "routes": [{"upstream": "demo"}],
              "workers": 2, "crypto": {"provider": "vcrypto"}, "metrics": {"port": 0},
              "vcrypto": {"host_metrics": "127.0.0.1:0", "backend_metrics": "127.0.0.1:0"},
              "logging": {"error_log": str(tmp / "error.log"), "access_log": str(tmp / "access.log")}}
    (tmp / "vcproxy.yaml").write_text(yaml.safe_dump(config))
    strace = subprocess.Popen(["strace", "-f", "-ff", "-qq", "-s", "256", "-o", str(tmp / "trace"), sys.executable, "-m",
                               "vcproxy", "run", "--config", str(tmp / "vcproxy.yaml")])
    try:
        ready = None
        deadline = time.monotonic() + 120
        while ready is None and time.monotonic() < deadline:
            time.sleep(0.2)
            if (tmp / "error.log").exists():
                events = [json.loads(line) for line in (tmp / "error.log").read_text().splitlines()]
                ready = next((e for e in events if e.get("event") == "ready"), None)
        if ready is None:
            raise SystemExit("vcproxy did not get ready under strace in 120 s")
        listen = int(next(iter(ready["listeners"].values())).rsplit(":", 1)[1])
        ctx = ssl.create_default_context(cafile=str(cert))
        for _ in range(HANDSHAKES):
            with socket.create_connection(("127.0.0.1", listen), timeout=30) as raw, \
                    ctx.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(b"GET /bytes?n=100000 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                while tls.recv(65536):
                    pass
        supervisor = ready["pid"]
        subprocess.run(["kill", "-HUP", str(supervisor)], check=True)   # the reload path too
        time.sleep(2)
        subprocess.run(["kill", "-TERM", str(supervisor)], check=True)
        strace.wait(120)
    finally:
        if strace.poll() is None:
            strace.kill()
        upstream.send_signal(signal.SIGTERM)
        upstream.wait(10)
    calls: dict[str, set[str]] = collections.defaultdict(set)
    for path in tmp.glob("trace.*"):
        text = path.read_text(errors="replace")
        kind = _kind(text)
        for line in text.splitlines():
            m = re.match(r"([a-z_0-9]+)\(", line)
            if m:
                calls[kind].add(m.group(1))
            if re.search(r"\b(mmap|mprotect|pkey_mprotect)\(.*PROT_EXEC", line) and "PROT_WRITE" in line:
                calls[kind].add("W+X mapping: " + line[:120])
    return calls


def main() -> int:
    groups = _groups()
    allowed = _expand(groups, "@system-service")
    daemon_denied = _expand(groups, "@resources")
    with tempfile.TemporaryDirectory(prefix="syscall-audit-") as tmp:
        calls = run(Path(tmp))
    bad = 0
    for kind, names in sorted(calls.items()):
        outside = sorted(n for n in names if n not in allowed)
        if kind in ("vcrypto-host", "host workers resource", "engine-backend"):
            outside += sorted(n for n in names if n in daemon_denied)
        bad += len(outside)
        print(f"{kind}: {len(names)} distinct syscalls; outside the unit's filter: {outside or 'none'}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

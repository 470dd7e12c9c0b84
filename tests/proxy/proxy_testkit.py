"""Helpers and fixtures for the proxy tests (conftest.py re-exports the fixtures): certificates, a demo upstream, a real `vcproxy run`.

Everything runs as real processes on loopback ports chosen by the kernel
(port 0, read back from the processes' ready lines) and is stopped by PID in
teardown.
"""
from __future__ import annotations

import contextlib
import datetime
import http.client
import ipaddress
import json
import re
import resource
import selectors
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 60.0


def make_cert(directory: Path, stem: str, cn: str = "localhost") -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{stem}.pem", directory / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@pytest.fixture(scope="session")
def certs(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    d = tmp_path_factory.mktemp("certs")
    return {"a": make_cert(d, "a"), "b": make_cert(d, "b")}


class DemoUpstream:
    def __init__(self, tmp: Path) -> None:
        self.log = open(tmp / "demo-upstream.out", "w+")
        self.proc = subprocess.Popen([sys.executable, "-m", "vcproxy", "demo-upstream", "--port", "0"],
                                     cwd=REPO, stdout=subprocess.PIPE, stderr=self.log, text=True)
        line = self.proc.stdout.readline()
        self.port = json.loads(line)["port"]
        self.address = f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        _stop(self.proc, 5)
        self.log.close()


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    up = DemoUpstream(tmp_path_factory.mktemp("upstream"))
    yield up
    up.stop()


def _stop(proc: subprocess.Popen, timeout_s: float) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_HELD: list[socket.socket] = []


def closed_port() -> int:
    """A loopback port nothing listens on, and nothing can: a socket stays
    bound to it without listen() for the rest of the test run (a connect is
    refused). A port merely bound and released was sometimes handed to a
    later test server by the kernel, which then answered 404 where the test
    expected 502."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    _HELD.append(sock)
    return sock.getsockname()[1]


class Proxy:
    """A real `python -m vcproxy run` on a temp config; ports are read from its ready event."""

    def __init__(self, tmp: Path, config: dict) -> None:
        self.tmp = tmp
        self.config_path = tmp / "vcproxy.yaml"
        self.error_log = tmp / "error.log"
        self.access_log = tmp / "access.log"
        config.setdefault("logging", {}).update(
            {"error_log": str(self.error_log), "access_log": str(self.access_log)})
        config.setdefault("metrics", {}).setdefault("port", 0)
        self.write_config(config)
        self.stdout = open(tmp / "stdout.log", "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "vcproxy", "run", "--config", str(self.config_path)],
                                     cwd=REPO, stdout=self.stdout, stderr=subprocess.STDOUT)

    def wait_ready(self) -> None:
        ready = self.wait_event("ready", START_TIMEOUT_S)
        self.listeners = {name: int(addr.rsplit(":", 1)[1]) for name, addr in ready["listeners"].items()}
        self.port = next(iter(self.listeners.values()))
        self.metrics_url = ready["metrics"]
        self.workers = ready["workers"]

    def write_config(self, config: dict) -> None:
        self.config = config
        self.config_path.write_text(yaml.safe_dump(config))

    def events(self) -> list[dict]:
        if not self.error_log.exists():
            return []
        out = []
        for line in self.error_log.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass
        return out

    def access(self) -> list[dict]:
        if not self.access_log.exists():
            return []
        return [json.loads(line) for line in self.access_log.read_text().splitlines() if line.strip()]

    def wait_event(self, name: str, timeout_s: float = 20.0, count: int = 1) -> dict:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = [e for e in self.events() if e.get("event") == name]
            if len(found) >= count:
                return found[count - 1]
            if self.proc.poll() is not None:
                raise AssertionError(f"vcproxy exited ({self.proc.returncode}) before {name!r}: "
                                     f"{(self.tmp / 'stdout.log').read_text()[-3000:]} {self.events()[-5:]}")
            time.sleep(0.05)
        raise AssertionError(f"no {name!r} event within {timeout_s}s: {self.events()[-5:]}")

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def stop(self) -> None:
        _stop(self.proc, 20)
        self.stdout.close()


def client_context(cafile: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(cafile))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    return ctx


def base_config(upstream_addr: str, cert: tuple[Path, Path] | None, **extra) -> dict:
    listener: dict = {"port": 0}
    if cert is None:
        listener["tls"] = {"enabled": False}
    else:
        listener["tls"] = {"certificates": [{"cert": str(cert[0]), "key": str(cert[1])}]}
    config = {
        "listeners": [listener],
        "upstreams": {"demo": {"servers": [upstream_addr]}},
        "routes": [{"upstream": "demo"}],
        "workers": 1,
        "crypto": {"provider": "inline"},
    }
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key].update(value)
        else:
            config[key] = value
    return config


@contextlib.contextmanager
def running_proxy(tmp: Path, config: dict):
    """A started `Proxy` that is stopped on exit, also when it never got ready."""
    proxy = Proxy(tmp, config)
    try:
        proxy.wait_ready()
        yield proxy
    finally:
        proxy.stop()


@pytest.fixture(scope="module")
def ctx(certs) -> ssl.SSLContext:
    """A client context trusting certificate "a" (the one ``base_config`` serves)."""
    return client_context(certs["a"][0])


@pytest.fixture
def start_proxy(tmp_path):
    started: list[Proxy] = []

    def start(config: dict, name: str = "p") -> Proxy:
        d = tmp_path / f"{name}{len(started)}"
        d.mkdir()
        proxy = Proxy(d, config)
        started.append(proxy)
        proxy.wait_ready()
        return proxy

    yield start
    for proxy in started:
        proxy.stop()


def scrape(url: str) -> dict[tuple[str, frozenset], float]:
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        m = re.match(r"^([a-zA-Z_:][\w:]*)(\{(.*)\})?\s+(\S+)$", line)
        labels = frozenset(re.findall(r'(\w+)="([^"]*)"', m.group(3) or ""))
        out[(m.group(1), labels)] = float(m.group(4))
    return out


def scrape_until(url: str, check, timeout_s: float = 10.0) -> dict[tuple[str, frozenset], float]:
    """Scrape until ``check(samples)`` holds (or ``timeout_s`` passed); the last samples.
    Per-request and per-record counts reach /metrics within the worker's
    flush interval (vcproxy.proxy._counts), not at once."""
    deadline = time.monotonic() + timeout_s
    while True:
        samples = scrape(url)
        if check(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.05)


def total(samples, name: str, **labels) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


def worker_pids(proxy: Proxy) -> list[int]:
    """The supervisor's live worker processes (from /proc: children running `vcproxy worker`)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        if ppid == proxy.proc.pid and b"worker" in cmdline:
            pids.append(int(entry.name))
    return pids


def peak_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for {pid}")


#: The first 5 bytes of a TLS record carrying a ClientHello (type 22, version,
#: length): a client that sends this and stops holds a slot in its handshake.
HELLO_START = b"\x16\x03\x01\x02\x00"


def raise_nofile(want: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))


class Flood:
    """``count`` connections holding half-sent ClientHellos, kept up by a thread:
    one the proxy closes (shed, or its handshake deadline) is replaced at once,
    as an attacker would. Bounded: ``count`` sockets, until ``stop()``."""

    def __init__(self, port: int, count: int) -> None:
        self.port = port
        self.selector = selectors.DefaultSelector()
        self.replaced = 0
        self._stop = threading.Event()
        for _ in range(count):
            self._open()
        self.thread = threading.Thread(target=self._keep_up, daemon=True)
        self.thread.start()

    def _open(self) -> None:
        s = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        s.sendall(HELLO_START)  # the kernel queues it even before accept
        s.setblocking(False)
        self.selector.register(s, selectors.EVENT_READ)

    def _keep_up(self) -> None:
        while not self._stop.is_set():
            for key, _ in self.selector.select(timeout=0.05):
                self.selector.unregister(key.fileobj)
                key.fileobj.close()  # the proxy closed it (EOF or reset)
                if not self._stop.is_set():
                    self._open()
                    self.replaced += 1

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(10)
        for key in list(self.selector.get_map().values()):
            key.fileobj.close()
        self.selector.close()


def timed_request(port: int, ctx: ssl.SSLContext) -> float:
    """Wall time of a new TLS connection + GET /health (asserted ok)."""
    started = time.monotonic()
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=30)
    conn.request("GET", "/health")
    assert conn.getresponse().read() == b"ok\n"
    conn.close()
    return time.monotonic() - started

"""The four configurations of the benchmark, each started as real processes.

(a) ``inline``   vcproxy, ``crypto.provider: inline`` (crypto in the workers)
(b) ``openssl``  vcproxy + vcrypto, the pool is one ``openssl`` resource
(c) ``workers``  vcproxy + vcrypto, RSA signing on a ``workers`` resource
                 (two processes), everything else on ``openssl`` (a worker
                 hop costs ~100 µs of CPU: it pays only for RSA; see the
                 ``workers`` resource docstring)
(d) ``stdlib``   ``bench/_stdlib_proxy.py``: trio ``SSLStream`` on stdlib ssl

Each has two TLS listeners, one with the ECDSA P-256 certificate and one with
the RSA-2048 certificate, the same number of workers, and the same upstream.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

from _procs import Service, free_port, roles, wait_until
from vcrypto.ops import ALL_CAPABILITIES, Op

ROOT = Path(__file__).resolve().parents[1]
NAMES = ("inline", "openssl", "workers", "stdlib")
LABELS = {
    "inline": "(a) vcproxy inline",
    "openssl": "(b) vcproxy+vcrypto openssl",
    "workers": "(c) vcproxy+vcrypto workers(RSA)",
    "stdlib": "(d) trio+stdlib ssl",
}


def _rsa_split() -> tuple[list[str], list[str]]:
    """Capabilities: (everything but RSA signing, RSA signing)."""
    rsa, rest = [], []
    for op, alg in sorted(ALL_CAPABILITIES, key=lambda c: (c[0].value, c[1].value)):
        (rsa if op is Op.SIGN and alg.value.startswith("rsa") else rest).append(f"{op.value}:{alg.value}")
    return rest, rsa


def pool_for(name: str) -> dict | None:
    if name == "openssl":
        return {"resources": [{"name": "soft", "kind": "openssl"}]}
    if name == "workers":
        rest, rsa = _rsa_split()
        return {"resources": [
            {"name": "soft", "kind": "openssl", "capabilities": rest},
            {"name": "procs", "kind": "workers", "processes": 2, "capabilities": rsa},
        ], "policy": "capability"}
    return None


class Running:
    """A started configuration: ports by certificate kind, metrics URLs, its processes."""

    def __init__(self, name: str, service: Service, ports: dict[str, int], metrics: str | None,
                 daemon_metrics: dict[str, str]):
        self.name = name
        self.service = service
        self.ports = ports
        self.metrics = metrics
        self.daemon_metrics = daemon_metrics

    def processes(self) -> dict[int, str]:
        return roles(self.service.pid)

    def stop(self) -> None:
        self.service.stop()


def start(name: str, work: Path, certs: dict[str, tuple[Path, Path]], upstream: str, workers: int,
          vcrypto_crypto: dict | None = None, vcrypto_extra: dict | None = None,
          tls_extra: dict | None = None, cpus: set[int] | None = None, root: Path = ROOT) -> Running:
    """``vcrypto_crypto``: extra ``crypto:`` keys for (b) and (c), e.g.
    ``{"small_record_threshold_bytes": 20000}`` to keep all AEAD in the workers;
    ``vcrypto_extra``: extra ``vcrypto:`` keys (``fifo``, ``host_poll``...);
    ``tls_extra``: extra keys of every listener's ``tls:`` (``tickets``...);
    ``cpus``: pin the configuration's whole process tree to these CPUs;
    ``root``: the source tree vcproxy runs from (its working directory, first
    on ``sys.path`` of ``python -m``): another checkout, for an A/B in one run.
    A name outside ``NAMES`` runs vcproxy + vcrypto with the default pool."""
    d = work / name
    d.mkdir(parents=True, exist_ok=True)
    if name == "stdlib":
        tickets = (tls_extra or {}).get("tickets", {}).get("enabled", True)
        return _start_stdlib(d, certs, upstream, workers, cpus, tickets)
    return _start_vcproxy(name, d, certs, upstream, workers, vcrypto_crypto or {}, vcrypto_extra or {},
                          tls_extra or {}, cpus, root)


def _start_vcproxy(name: str, d: Path, certs, upstream: str, workers: int, vcrypto_crypto: dict,
                   vcrypto_extra: dict | None = None, tls_extra: dict | None = None,
                   cpus: set[int] | None = None, root: Path = ROOT) -> Running:
    error_log = d / "error.log"
    inline = name == "inline" or name.startswith("inline-")  # ("inline-ref": another checkout's inline)
    config: dict = {
        "listeners": [{"name": kind, "address": "127.0.0.1", "port": 0,
                       "tls": {"certificates": [{"cert": str(c), "key": str(k)}], **(tls_extra or {})}}
                      for kind, (c, k) in certs.items()],
        "upstreams": {"up": {"servers": [upstream], "max_idle_connections": 64}},
        "routes": [{"path_prefix": "/", "upstream": "up"}],
        "workers": workers,
        "crypto": {"provider": "inline" if inline else "vcrypto"},
        "metrics": {"address": "127.0.0.1", "port": 0},
        "logging": {"level": "warning", "error_log": str(error_log), "access_log": None},
        "limits": {"max_connections": 4096},
    }
    daemon_metrics: dict[str, str] = {}
    if not inline:
        host_m, backend_m = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
        config["vcrypto"] = {"host_metrics": host_m, "backend_metrics": backend_m, "pool": pool_for(name),
                             **(vcrypto_extra or {})}
        config["crypto"].update(vcrypto_crypto)
        daemon_metrics = {"host": f"http://{host_m}/metrics", "backend": f"http://{backend_m}/metrics"}
    # the ready event is logged at info; keep the rest of the log quiet
    config["logging"]["level"] = "info"
    (d / "vcproxy.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    service = Service(f"vcproxy-{name}", [sys.executable, "-m", "vcproxy", "run", "--config",
                                          str(d / "vcproxy.yaml")], d, root, cpus=cpus)

    def ready():
        if not service.alive():
            raise RuntimeError(f"vcproxy ({name}) exited with {service.proc.returncode}: {service.tail()}"
                               f"\n{error_log.read_text()[-2000:] if error_log.exists() else ''}")
        if not error_log.exists():
            return None
        for line in error_log.read_text().splitlines():
            if '"ready"' in line:
                event = json.loads(line)
                if event.get("event") == "ready":
                    return event
        return None

    try:
        event = wait_until(ready, 90.0, f"vcproxy ({name}) ready")
    except BaseException:
        service.stop()
        raise
    ports = {kind: int(addr.rsplit(":", 1)[1]) for kind, addr in event["listeners"].items()}
    return Running(name, service, ports, event.get("metrics"), daemon_metrics)


def _start_stdlib(d: Path, certs, upstream: str, workers: int, cpus: set[int] | None = None,
                  tickets: bool = True) -> Running:
    argv = [sys.executable, str(ROOT / "bench" / "_stdlib_proxy.py"), "--upstream", upstream,
            "--workers", str(workers), *(() if tickets else ("--no-tickets",))]
    for kind, (c, k) in certs.items():
        argv += ["--listen", f"{kind}={c},{k}"]
    service = Service("stdlib-proxy", argv, d, ROOT, stdout_pipe=True, cpus=cpus)
    line = service.proc.stdout.readline()
    if not line:
        service.stop()
        raise RuntimeError(f"stdlib proxy did not start: {service.tail()}")
    info = json.loads(line)
    return Running("stdlib", service, {k: int(v) for k, v in info["ports"].items()}, None, {})

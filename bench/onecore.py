"""One-core mode: CPU time of each TLS terminator's process tree per unit of work.

    .venv/bin/python bench/onecore.py [--seconds 3] [--repeats 3] [--only pump,stdlib,inline,vcrypto]

Every terminator runs with its whole process tree pinned to CPU 0
(``os.sched_setaffinity`` between fork and exec of its first process, so the
vcproxy supervisor's workers and the vcrypto daemons inherit it); the load
generators and the upstream run on CPU 1. The terminators, all with one worker
and no session tickets:

- ``pump``: ``bench/_bytepump.py``, trio + stdlib ``ssl`` byte pump (L4, one
  upstream connection per client connection): the baseline of the ratios;
- ``stdlib``: ``bench/_stdlib_proxy.py``, trio + stdlib ``ssl`` + h11 (L7);
- ``inline``: vcproxy, ``crypto.provider: inline``;
- ``vcrypto``: vcproxy + vcrypto at its defaults (default pool and thresholds).

Upstream: nginx (Debian; ``make benchdeps``) serving ``/`` (100-byte body) and
``/big`` (10 MiB) from a directory made per run, one process; without nginx,
``bench/_upstream.py`` (``/`` 64 bytes, ``/bytes?n=10485760``).

Workloads, TLS 1.3 + X25519 + AES-128-GCM (the load generators' OpenSSL is
told so through ``OPENSSL_CONF``; the negotiated suite and group are checked
on vcproxy's handshake metric):

- ``keepalive``: ``wrk`` on ``GET /``, 8 connections: µs CPU per request;
- ``bulk``: ``wrk`` on the 10 MiB body, 4 connections: µs CPU per MiB read;
- ``hs_ecdsa`` / ``hs_rsa``: ``openssl s_time -new`` (a full handshake and one
  ``GET /`` per connection), 4 processes: µs CPU per handshake.

CPU of a terminator = utime + stime of every live process of its tree plus
cutime + cstime (reaped children), from ``/proc/PID/stat``, sampled right
before and after each load window. Each (terminator, workload) runs
``--repeats`` times, terminators in a rotated order per repeat; the table
shows the median and the spread (min–max) and the median's ratio to the pump.
The load generators' CPU is not counted (they are not in the tree), nor the
upstream's (the same for every terminator).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _configs  # noqa: E402
from _certs import make_cert  # noqa: E402
from _procs import Service, scrape, tree_cpu_seconds, wait_until  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PROXY_CPU = {0}
LOAD_CPU = {1}
SMALL_BODY = b"x" * 99 + b"\n"  # 100 bytes
BIG_BYTES = 10 * 1024 * 1024
TERMINATORS = ("pump", "stdlib", "inline", "vcrypto")
WORKLOADS = ("keepalive", "bulk", "hs_ecdsa", "hs_rsa")
UNITS = {"keepalive": "µs CPU per request", "bulk": "µs CPU per MiB",
         "hs_ecdsa": "µs CPU per full handshake", "hs_rsa": "µs CPU per full handshake"}
LABELS = {"keepalive": "keep-alive `GET /` (100 B)", "bulk": "10 MiB downloads over keep-alive",
          "hs_ecdsa": "full handshake ECDSA P-256", "hs_rsa": "full handshake RSA-2048"}
SLACK_S = 30.0

# OpenSSL of the load generators: offer only TLS 1.3 AES-128-GCM and X25519
OPENSSL_CNF = """openssl_conf = default_conf
[default_conf]
ssl_conf = ssl_sect
[ssl_sect]
system_default = system_default_sect
[system_default_sect]
MinProtocol = TLSv1.3
Ciphersuites = TLS_AES_128_GCM_SHA256
Groups = X25519
"""

NGINX_CONF = """daemon off;
master_process off;
worker_processes 1;
user root;
pid {d}/nginx.pid;
error_log {d}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {d}/tmp;
  proxy_temp_path {d}/tmp;
  fastcgi_temp_path {d}/tmp;
  uwsgi_temp_path {d}/tmp;
  scgi_temp_path {d}/tmp;
  keepalive_requests 1000000;
  keepalive_timeout 300s;
  sendfile on;
  tcp_nopush on;
  default_type text/plain;
  server {{
    listen 127.0.0.1:{port};
    root {d}/www;
    location = / {{ try_files /small.txt =404; }}
  }}
}}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, timeout_s: float) -> None:
    def up():
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return True
        except OSError:
            return False
    wait_until(up, timeout_s, f"127.0.0.1:{port} listening")


class Upstream:
    """nginx if installed, else bench/_upstream.py; on LOAD_CPU."""

    def __init__(self, work: Path):
        nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
        d = work / "upstream"
        (d / "www").mkdir(parents=True)
        (d / "tmp").mkdir()
        if nginx:
            (d / "www" / "small.txt").write_bytes(SMALL_BODY)
            (d / "www" / "big").write_bytes(os.urandom(BIG_BYTES))
            self.port = _free_port()
            (d / "nginx.conf").write_text(NGINX_CONF.format(d=d, port=self.port))
            self.service = Service("nginx", [nginx, "-c", str(d / "nginx.conf"), "-e", str(d / "nginx-error.log")],
                                   d, ROOT, cpus=LOAD_CPU)
            self.kind, self.small, self.big = "nginx", "/", "/big"
            self.small_body = len(SMALL_BODY)
        else:
            self.service = Service("upstream", [sys.executable, str(ROOT / "bench" / "_upstream.py")], d, ROOT,
                                   stdout_pipe=True, cpus=LOAD_CPU)
            self.port = json.loads(self.service.proc.stdout.readline())["port"]
            self.kind, self.small, self.big = "bench/_upstream.py", "/", f"/bytes?n={BIG_BYTES}"
            self.small_body = 64
        _wait_port(self.port, 10)


class Terminator:
    def __init__(self, name: str, service: Service, ports: dict[str, int], metrics: str | None = None):
        self.name, self.service, self.ports, self.metrics = name, service, ports, metrics

    def cpu_s(self) -> float:
        if not self.service.alive():
            raise RuntimeError(f"{self.name} exited: {self.service.tail()}")
        return tree_cpu_seconds(self.service.pid)

    def stop(self) -> None:
        self.service.stop()


def start_terminator(name: str, work: Path, certs: dict, upstream: str, ref: Path | None = None) -> Terminator:
    """``inline@ref`` / ``vcrypto@ref``: vcproxy run from the ``ref`` source tree."""
    no_tickets = {"tickets": {"enabled": False}}
    root = ROOT
    if name.endswith("@ref"):
        if ref is None:
            raise ValueError(f"{name} needs --ref DIR")
        root = ref
    if name == "pump":
        d = work / name
        d.mkdir()
        argv = [sys.executable, str(ROOT / "bench" / "_bytepump.py"), "--upstream", upstream, "--no-tickets"]
        for kind, (c, k) in certs.items():
            argv += ["--listen", f"{kind}={c},{k}"]
        service = Service("bytepump", argv, d, ROOT, stdout_pipe=True, cpus=PROXY_CPU)
        info = json.loads(service.proc.stdout.readline() or "{}")
        if "ports" not in info:
            service.stop()
            raise RuntimeError(f"byte pump did not start: {service.tail()}")
        return Terminator(name, service, {k: int(v) for k, v in info["ports"].items()})
    base = name.removesuffix("@ref")
    cfg = {"vcrypto": "default-pool"}.get(base, base)  # a name outside NAMES: vcrypto, default pool
    if root is not ROOT:
        cfg += "-ref"  # its own directory ("inline-ref" stays inline, "default-pool-ref" vcrypto)
    running = _configs.start(cfg, work, certs, upstream, 1, tls_extra=no_tickets, cpus=PROXY_CPU, root=root)
    return Terminator(name, running.service, running.ports, running.metrics)


def _load_env(cnf: Path) -> dict[str, str]:
    return {**os.environ, "OPENSSL_CONF": str(cnf)}


def _pinned(argv: list[str]) -> list[str]:
    return ["taskset", "-c", ",".join(map(str, sorted(LOAD_CPU))), *argv]


_WRK_UNITS = {"B": 1, "KB": 1024, "MB": 1024 ** 2, "GB": 1024 ** 3, "TB": 1024 ** 4}


def run_wrk(port: int, path: str, conns: int, seconds: int, env: dict) -> dict:
    argv = _pinned(["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--timeout", "10s",
                    f"https://127.0.0.1:{port}{path}"])
    out = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=seconds + SLACK_S).stdout
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+), ([\d.]+)(\w+) read", out)
    if not m:
        raise RuntimeError(f"wrk output not understood:\n{out[-800:]}")
    errors = re.search(r"Socket errors: (.*)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        raise RuntimeError(f"wrk: {non2xx.group(1)} error responses:\n{out[-800:]}")
    return {"requests": int(m.group(1)), "bytes": float(m.group(4)) * _WRK_UNITS[m.group(5)],
            "socket_errors": errors.group(1) if errors else ""}


def run_s_time(port: int, procs: int, seconds: int, env: dict) -> dict:
    argv = _pinned(["openssl", "s_time", "-connect", f"127.0.0.1:{port}", "-new", "-time", str(seconds),
                    "-www", "/"])
    ps = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
          for _ in range(procs)]
    total = 0
    for p in ps:
        try:
            out, _ = p.communicate(timeout=seconds + SLACK_S)
        except subprocess.TimeoutExpired:
            p.kill()
            out, _ = p.communicate()
        m = re.search(r"(\d+) connections in [\d.]+s; [\d.]+ connections/user sec, bytes read (\d+)", out)
        if not m:
            raise RuntimeError(f"s_time output not understood:\n{out[-600:]}")
        if "r" in "".join(line for line in out.splitlines() if set(line) <= {"*", "r"}):
            raise RuntimeError("s_time resumed a session: not a full handshake")
        total += int(m.group(1))
    return {"handshakes": total}


def measure(term: Terminator, workload: str, up: Upstream, seconds: int, env: dict) -> dict:
    before = term.cpu_s()
    t0 = time.perf_counter()
    if workload == "keepalive":
        r = run_wrk(term.ports["ecdsa"], up.small, 8, seconds, env)
        units = r["requests"]
    elif workload == "bulk":
        r = run_wrk(term.ports["ecdsa"], up.big, 4, seconds, env)
        units = r["bytes"] / (1024 * 1024)
    else:
        r = run_s_time(term.ports["ecdsa" if workload == "hs_ecdsa" else "rsa"], 4, seconds, env)
        units = r["handshakes"]
    wall = time.perf_counter() - t0
    cpu = term.cpu_s() - before
    return {**r, "units": units, "cpu_s": cpu, "wall_s": wall, "us_per_unit": cpu / units * 1e6 if units else None,
            "cpu_share": cpu / wall}


def check_negotiated(term: Terminator) -> str:
    """The suite and group vcproxy reports for the handshakes so far."""
    if not term.metrics:
        return ""
    import urllib.request
    try:
        text = urllib.request.urlopen(term.metrics, timeout=5).read().decode()
    except OSError:
        return ""
    seen = set()
    for line in text.splitlines():
        if line.startswith("vcproxy_tls_handshakes_total{") and not line.endswith(" 0.0"):
            suite = re.search(r'cipher_suite="([^"]*)"', line)
            group = re.search(r'group="([^"]*)"', line)
            if suite and suite.group(1):  # failed handshakes carry no suite
                seen.add(f"{suite.group(1)}/{group.group(1) if group else '?'}")
    return ", ".join(sorted(seen))


def _fmt(v: float) -> str:
    return f"{v:,.0f}" if v >= 100 else f"{v:.1f}"


def table(results: dict, names: list[str]) -> str:
    head = "| work | " + " | ".join(names) + " |"
    out = [head, "|---|" + "---|" * len(names)]
    for w in WORKLOADS:
        base = results.get("pump", {}).get(w, {}).get("median")
        cells = []
        for n in names:
            r = results.get(n, {}).get(w)
            if not r or r.get("median") is None:
                cells.append("–")
                continue
            cell = f"{_fmt(r['median'])} ({_fmt(r['min'])}–{_fmt(r['max'])})"
            if base and n != "pump":
                cell += f" **{r['median'] / base:.2f}×**"
            cells.append(cell)
        out.append(f"| {LABELS[w]}, {UNITS[w]} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def _git_commit() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except OSError:
        return "?"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=3, help="load window per measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", default=",".join(TERMINATORS), help="terminators, comma-separated")
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--json", type=Path, default=None, help="default: bench/results/<time>-onecore.json")
    parser.add_argument("--ref", type=Path, default=None,
                        help="another source tree (e.g. `git archive` of a commit): --only inline@ref runs "
                             "vcproxy from it beside this tree's, an A/B in one run")
    args = parser.parse_args(argv)
    names = [n for n in args.only.split(",") if n]
    workloads = [w for w in args.workloads.split(",") if w]
    for tool in ("wrk", "openssl", "taskset"):
        if not shutil.which(tool):
            print(f"{tool} not found: make benchdeps", file=sys.stderr)
            return 2
    if os.cpu_count() is None or os.cpu_count() < 2:
        print("needs 2 CPUs", file=sys.stderr)
        return 2
    started = datetime.datetime.now(datetime.timezone.utc)
    load_start = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="vcproxy-onecore-"))
    cnf = work / "openssl-client.cnf"
    cnf.write_text(OPENSSL_CNF)
    env = _load_env(cnf)
    certs = {kind: make_cert(work, kind) for kind in ("ecdsa", "rsa")}
    up = Upstream(work)
    terms: dict[str, Terminator] = {}
    raw: dict[str, dict[str, list[dict]]] = {n: {w: [] for w in workloads} for n in names}
    try:
        for n in names:
            terms[n] = start_terminator(n, work, certs, f"127.0.0.1:{up.port}", args.ref)
        for n in names:  # warm-up: a few handshakes and requests, outside any window
            run_wrk(terms[n].ports["ecdsa"], up.small, 2, 1, env)
        for rep in range(args.repeats):
            for w in workloads:
                order = names[rep % len(names):] + names[:rep % len(names)]
                for n in order:
                    r = measure(terms[n], w, up, args.seconds, env)
                    raw[n][w].append(r)
                    print(f"rep {rep + 1} {w:9s} {n:8s} {r['us_per_unit']:10.1f} {UNITS[w]} "
                          f"({r['units']:.0f} units, CPU {r['cpu_share']:.0%} of one core)", flush=True)
        negotiated = {n: check_negotiated(t) for n, t in terms.items() if t.metrics}
    finally:
        for t in terms.values():
            t.stop()
        up.service.stop()
    load_end = os.getloadavg()
    results: dict = {}
    for n in names:
        results[n] = {}
        for w in workloads:
            vals = [r["us_per_unit"] for r in raw[n][w] if r["us_per_unit"] is not None]
            results[n][w] = {"median": statistics.median(vals), "min": min(vals), "max": max(vals),
                             "values": vals} if vals else {"median": None}
    meta = {"started": started.isoformat(timespec="seconds"), "commit": _git_commit(),
            "machine": f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, "
                       f"Linux {platform.release()}, Python {platform.python_version()}, {ssl.OPENSSL_VERSION}",
            "load_avg_start": load_start, "load_avg_end": load_end, "upstream": up.kind,
            "seconds": args.seconds, "repeats": args.repeats, "negotiated": negotiated}
    out_json = args.json or ROOT / "bench" / "results" / f"{started:%Y-%m-%dT%H%MZ}-onecore.json"
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps({"meta": meta, "results": results, "raw": raw}, indent=1))
    print()
    print(f"commit {meta['commit']}, {meta['started']}, {meta['machine']}")
    print(f"load average at start {load_start[0]:.2f}, at end {load_end[0]:.2f}; upstream {up.kind}; "
          f"median (min–max) of {args.repeats} x {args.seconds} s; ratio to the pump in bold")
    print(f"negotiated (vcproxy metrics): {negotiated}")
    print(table(results, names))
    print(f"\n{out_json}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

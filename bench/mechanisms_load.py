"""vcrypto's mechanisms at work in the product, measured from outside.

Starts the proxy exactly as ``make run`` does (``config/vcproxy.yaml``:
2 workers, crypto.provider vcrypto, the supervisor's vcrypto-host and
engine-backend), on free ports, and drives it with a bounded load of
concurrent clients, each doing full TLS handshakes (no resumption) and
downloading a body. Then reads the daemons' own metrics and prints, for the
load after warm-up:

- mean batch fill per op family (handshake: ECDH + sign; bulk: AEAD records)
  from ``vcrypto_engine_family_batch_fill``;
- notifications per request: frontend doorbells + backend calls to frontends
  + backend kicks to the host + host calls to the backend, per request;
- sessions created and closed at the host during the load (per-connection
  traffic keys cost two each in session mode, none stateless);
- shared session-cache hits / lookups (reusable sessions only);
- requests completed per host resource (which implementations ran);
- fallbacks to in-process crypto;
- CPU seconds during the load per process role (the load generator itself,
  the proxy workers, each daemon), so "saturation" can be told from a
  client-bound run;
- the daemons' and each proxy worker's CPU at idle afterwards (percent of
  one core over 10 s).

    .venv/bin/python bench/mechanisms_load.py [--clients 16] [--requests 800] [--seconds 60]
      [--body-bytes 524288] [--set KEY=VALUE ...]

Bounded: at most ``--requests`` requests and ``--seconds`` seconds of load.
Run on purpose (``make bench-mechanisms``), never by CI.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import os
import re
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from _procs import cpu_seconds, descendants, free_port, role  # noqa: E402

_LINE = re.compile(r"^([a-zA-Z_:][\w:]*)(\{(.*)\})?\s+(\S+)$")


def scrape(url: str) -> dict[tuple[str, frozenset], float]:
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        m = _LINE.match(line)
        if m:
            labels = frozenset(re.findall(r'(\w+)="([^"]*)"', m.group(3) or ""))
            out[(m.group(1), labels)] = float(m.group(4))
    return out


def total(samples, name: str, **labels) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


def by_label(samples, name: str, label: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for (n, ls), v in samples.items():
        if n == name:
            key = dict(ls).get(label, "")
            out[key] = out.get(key, 0.0) + v
    return out


def fetch(port: int, ctx: ssl.SSLContext, body_bytes: int) -> int:
    """One full handshake (a fresh context session: no resumption) and a download."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
        # As curl and browsers do. Without it the request record, written
        # while the client Finished is not yet acknowledged, waits for the
        # server's delayed ACK (Nagle): 40 ms per connection, and a load
        # generator that never loads anything (measured: 52 ms per request
        # with 7 ms of CPU, 1 client; 16 clients kept 2 cores 50% busy).
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(f"GET /bytes?n={body_bytes} HTTP/1.1\r\nHost: localhost\r\n"
                        "Connection: close\r\n\r\n".encode())
            n = 0
            while chunk := tls.recv(262144):
                n += len(chunk)
    return n


def load(port: int, ctx: ssl.SSLContext, clients: int, requests: int, seconds: float,
         body_bytes: int) -> tuple[int, int, float]:
    deadline = time.monotonic() + seconds
    lock = threading.Lock()
    left = [requests]
    done = [0, 0]

    def client():
        while time.monotonic() < deadline:
            with lock:
                if left[0] <= 0:
                    return
                left[0] -= 1
            try:
                got = fetch(port, ctx, body_bytes)
                ok = got > body_bytes
            except OSError:
                ok = False
            with lock:
                done[0 if ok else 1] += 1

    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        for f in [pool.submit(client) for _ in range(clients)]:
            f.result()
    return done[0], done[1], time.monotonic() - t0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--requests", type=int, default=800)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--body-bytes", type=int, default=512 * 1024)
    p.add_argument("--idle-seconds", type=float, default=10.0)
    p.add_argument("--set", action="append", default=[], help="extra config override")
    args = p.parse_args(argv)
    cert = REPO / ".demo" / "cert.pem"
    if not cert.exists():
        print("bench/mechanisms_load.py: run `make demo-cert` first (make bench-mechanisms does)",
              file=sys.stderr)
        return 2
    port, mport, hport, bport, uport = (free_port() for _ in range(5))
    sets = [f"listeners[0].port={port}", f"metrics.port={mport}",
            f"vcrypto.host_metrics=127.0.0.1:{hport}", f"vcrypto.backend_metrics=127.0.0.1:{bport}",
            f"demo_upstream.port={uport}", f'upstreams.demo.servers=["127.0.0.1:{uport}"]', *args.set]
    argv_ = [sys.executable, "-m", "vcproxy", "run", "--config", "config/vcproxy.yaml"]
    for s in sets:
        argv_ += ["--set", s]
    log_path = Path(tempfile.mkdtemp(prefix="vcproxy-mechanisms-")) / "proxy.log"
    log = open(log_path, "w")
    proc = subprocess.Popen(argv_, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    ctx = ssl.create_default_context(cafile=str(cert))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    host_url, backend_url = f"http://127.0.0.1:{hport}/metrics", f"http://127.0.0.1:{bport}/metrics"
    proxy_url = f"http://127.0.0.1:{mport}/metrics"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                fetch(port, ctx, 1024)
                scrape(host_url), scrape(backend_url)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    print(f"vcproxy did not come up; see {log_path}", file=sys.stderr)
                    return 1
                time.sleep(0.2)
        load(port, ctx, args.clients, 2 * args.clients, 30, args.body_bytes)  # warm-up
        before = {u: scrape(u) for u in (host_url, backend_url, proxy_url)}
        procs = {pid: role(pid) for pid in descendants(proc.pid)}
        cpu0 = {pid: cpu_seconds(pid) for pid in procs}
        me0 = os.times()
        ok, failed, wall = load(port, ctx, args.clients, args.requests, args.seconds, args.body_bytes)
        me1 = os.times()
        cpu1 = {pid: cpu_seconds(pid) for pid in procs}
        after = {u: scrape(u) for u in (host_url, backend_url, proxy_url)}
        load_cpu: dict[str, float] = {"load generator (this process)":
                                      me1.user + me1.system - me0.user - me0.system}
        for pid, r in procs.items():
            if cpu0[pid] is not None and cpu1[pid] is not None:
                name = "proxy workers" if "worker" in r else r
                load_cpu[name] = load_cpu.get(name, 0.0) + cpu1[pid] - cpu0[pid]

        def d(url, name, **labels):
            return total(after[url], name, **labels) - total(before[url], name, **labels)

        fam = {f: (d(backend_url, "vcrypto_engine_family_batch_fill_sum", family=f),
                   d(backend_url, "vcrypto_engine_family_batch_fill_count", family=f))
               for f in ("handshake", "bulk")}
        # the handshake family's fill histogram (per-bucket deltas, not cumulative)
        les = ("1", "2", "4", "8", "16", "32", "64", "128", "+Inf")
        cum = [d(backend_url, "vcrypto_engine_family_batch_fill_bucket", family="handshake", le=le)
               for le in les]
        hs_hist = {le: c - p for le, c, p in zip(les, cum, [0.0] + cum[:-1])}
        shares = {ev: d(proxy_url, "vcproxy_crypto_key_shares_total", event=ev)
                  for ev in ("generated", "used", "missed", "expired")}
        requests = d(backend_url, "vcrypto_engine_requests_total")
        notes = {
            "frontend doorbells": d(proxy_url, "vcproxy_crypto_engine_doorbells_total"),
            "backend calls to frontends": d(backend_url, "vcrypto_engine_calls_total"),
            "backend kicks to the host": d(backend_url, "vcrypto_engine_host_kicks_total"),
            "host calls to the backend": d(backend_url, "vcrypto_engine_host_calls_total"),
        }
        # sessions the backend created and closed at the host (each a blocking
        # control round trip both ways): per-connection traffic keys, if any
        sessions_closed = d(backend_url, "vcrypto_engine_sessions_destroyed_total")
        hits = d(backend_url, "vcrypto_engine_cache_hits_total")
        misses = d(backend_url, "vcrypto_engine_cache_misses_total")
        res_after = by_label(after[host_url], "vcrypto_host_pool_resource_completed_total", "kind")
        res_before = by_label(before[host_url], "vcrypto_host_pool_resource_completed_total", "kind")
        fallbacks = d(proxy_url, "vcproxy_crypto_fallbacks_total")
        # idle: the daemons' CPU with no traffic
        time.sleep(2)
        daemons = {pid: role(pid) for pid in descendants(proc.pid)}
        daemons = {pid: r for pid, r in daemons.items() if "upstream" not in r and pid != proc.pid}
        c0 = {pid: cpu_seconds(pid) for pid in daemons}
        time.sleep(args.idle_seconds)
        c1 = {pid: cpu_seconds(pid) for pid in daemons}
        idle: dict[str, float] = {}
        for pid in daemons:
            if c0[pid] is not None:   # per process (the two workers each)
                name = f"{daemons[pid]} {pid}" if "worker" in daemons[pid] else daemons[pid]
                idle[name] = 100 * ((c1[pid] or 0) - (c0[pid] or 0)) / args.idle_seconds
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    print(f"load: {args.clients} clients, {ok} downloads of {args.body_bytes} B with full handshakes "
          f"({failed} failed) in {wall:.1f} s; {requests:.0f} engine requests")
    print("| measure | value |\n|---|---|")
    for f, (n, b) in fam.items():
        print(f"| mean batch fill, {f} ops | {n / b if b else 0:.2f} ({n:.0f} requests / {b:.0f} batches) |")
    print(f"| handshake batches by fill (<= le) | {', '.join(f'{le}: {n:.0f}' for le, n in hs_hist.items())} |")
    print(f"| key shares (worker pools; exported once a second, so lagging) | {', '.join(f'{k} {v:.0f}' for k, v in shares.items())} |")
    print(f"| notifications per request | {sum(notes.values()) / requests if requests else 0:.3f} "
          f"({', '.join(f'{k} {v:.0f}' for k, v in notes.items())}) |")
    print(f"| engine sessions created and closed at the host | {sessions_closed:.0f} "
          f"({sessions_closed / ok if ok else 0:.2f} per connection) |")
    print(f"| shared-cache hits / lookups | {hits / (hits + misses) if hits + misses else 0:.3f} "
          f"({hits:.0f} / {hits + misses:.0f}) |")
    done_by = {r: res_after.get(r, 0) - res_before.get(r, 0) for r in res_after}
    print(f"| requests completed per resource kind | {', '.join(f'{r} {v:.0f}' for r, v in sorted(done_by.items()))} |")
    print(f"| fallbacks to in-process | {fallbacks:.0f} |")
    for r, sec in sorted(load_cpu.items()):
        print(f"| CPU during the load, {r} | {sec:.2f} s ({100 * sec / wall:.0f}% of a core; "
              f"{1e3 * sec / ok if ok else 0:.2f} ms per connection) |")
    for r, pct in sorted(idle.items()):
        print(f"| idle CPU, {r} | {pct:.2f}% of a core |")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

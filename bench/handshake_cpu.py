"""CPU per full TLS handshake, vcrypto against inline, under load, in one run.

Starts the proxy as ``make run`` does (``config/vcproxy.yaml``: 2 workers),
once with ``crypto.provider`` vcrypto (the supervisor's vcrypto-host and
engine-backend) and once with ``inline``, alternating, ``--rounds`` times
each, and drives each with ``--clients`` concurrent clients doing full
handshakes (no resumption, TCP_NODELAY) and a 1 KiB GET. For each run it
counts the CPU (utime + stime from ``/proc``) of the whole process tree the
proxy consists of, split as: proxy workers; vcrypto daemons (host,
engine-backend, the host's worker processes); the supervisor (which also
serves the demo upstream the requests go to), and divides by the
connections completed. Reports the median of the rounds and the
vcrypto/inline ratio, for the tree without the supervisor (the proxy's
TLS and crypto) and for the whole tree.

    .venv/bin/python bench/handshake_cpu.py [--clients 16] [--requests 1600] [--rounds 3]
      [--set KEY=VALUE ...] [--variant KEY=VALUE ...]

``--variant`` adds a vcrypto run with that override to every round (e.g.
``--variant crypto.key_share_pool=0``: the key-share pool off), so a
mechanism's effect is measured in the same run, interleaved.

Bounded: ``--requests`` connections and ``--seconds`` per run. Run on
purpose, never by CI.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from _procs import cpu_seconds, descendants, free_port, role  # noqa: E402
from mechanisms_load import fetch, load  # noqa: E402

import ssl  # noqa: E402


def one_run(provider: str, args, extra: tuple[str, ...] = ()) -> dict[str, float]:
    port, mport, hport, bport, uport = (free_port() for _ in range(5))
    sets = [f"crypto.provider={provider}", f"listeners[0].port={port}", f"metrics.port={mport}",
            f"vcrypto.host_metrics=127.0.0.1:{hport}", f"vcrypto.backend_metrics=127.0.0.1:{bport}",
            f"demo_upstream.port={uport}", f'upstreams.demo.servers=["127.0.0.1:{uport}"]', *args.set,
            *extra]
    argv = [sys.executable, "-m", "vcproxy", "run", "--config", "config/vcproxy.yaml"]
    for s in sets:
        argv += ["--set", s]
    log_path = Path(tempfile.mkdtemp(prefix="vcproxy-hscpu-")) / "proxy.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        try:
            ctx = ssl.create_default_context(cafile=str(REPO / ".demo" / "cert.pem"))
            ctx.minimum_version = ssl.TLSVersion.TLSv1_3
            deadline = time.monotonic() + 60
            while True:
                try:
                    fetch(port, ctx, 16)
                    break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"vcproxy did not come up; see {log_path}") from None
                    time.sleep(0.2)
            load(port, ctx, args.clients, 4 * args.clients, 30, args.body_bytes)   # warm-up
            procs = {pid: role(pid) for pid in descendants(proc.pid)}
            procs[proc.pid] = "supervisor"
            c0 = {pid: cpu_seconds(pid) for pid in procs}
            ok, failed, wall = load(port, ctx, args.clients, args.requests, args.seconds,
                                    args.body_bytes)
            c1 = {pid: cpu_seconds(pid) for pid in procs}
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
    if failed or not ok:
        raise RuntimeError(f"{provider}: {failed} connections failed; see {log_path}")
    out = {"workers": 0.0, "daemons": 0.0, "supervisor": 0.0}
    for pid, r in procs.items():
        if c0[pid] is None or c1[pid] is None:
            continue
        part = ("workers" if "worker" in r and "host" not in r else
                "supervisor" if r == "supervisor" or "upstream" in r else "daemons")
        out[part] += (c1[pid] - c0[pid]) / ok * 1e6
    out["connections_per_s"] = ok / wall
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--requests", type=int, default=1600)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--body-bytes", type=int, default=1024)
    p.add_argument("--set", action="append", default=[], help="extra config override")
    p.add_argument("--variant", action="append", default=[],
                   help="also run vcrypto with this override (KEY=VALUE), in every round")
    args = p.parse_args(argv)
    if not (REPO / ".demo" / "cert.pem").exists():
        print("bench/handshake_cpu.py: run `make demo-cert` first", file=sys.stderr)
        return 2
    runs: dict[str, list[dict]] = {"inline": [], "vcrypto": []}
    variants = {"inline": ("inline", ()), "vcrypto": ("vcrypto", ())}
    for v in args.variant:
        runs[f"vcrypto {v}"] = []
        variants[f"vcrypto {v}"] = ("vcrypto", (v,))
    for _ in range(args.rounds):
        for name in runs:
            provider, extra = variants[name]
            runs[name].append(one_run(provider, args, extra))
    med = {pv: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for pv, rs in runs.items()}
    print(f"CPU per connection (full TLS 1.3 handshake + {args.body_bytes} B GET), "
          f"{args.clients} clients, {args.requests} connections per run, median of {args.rounds} "
          f"rounds (us)")
    print("| provider | workers | vcrypto daemons | supervisor + demo upstream | "
          "tree without supervisor | whole tree | connections/s |")
    print("|---|---|---|---|---|---|---|")
    for pv, m in med.items():
        print(f"| {pv} | {m['workers']:.0f} | {m['daemons']:.0f} | {m['supervisor']:.0f} | "
              f"{m['workers'] + m['daemons']:.0f} | {m['workers'] + m['daemons'] + m['supervisor']:.0f} | "
              f"{m['connections_per_s']:.0f} |")
    i = med["inline"]
    for name in runs:
        if name == "inline":
            continue
        v = med[name]
        print(f"{name}/inline: {(v['workers'] + v['daemons']) / (i['workers'] + i['daemons']):.2f}x "
              f"without the supervisor, "
              f"{(v['workers'] + v['daemons'] + v['supervisor']) / (i['workers'] + i['daemons'] + i['supervisor']):.2f}x "
              f"whole tree")
    for pv, rs in runs.items():
        each = ", ".join(f"{r['workers'] + r['daemons']:.0f}" for r in rs)
        print(f"{pv} rounds (workers + daemons us): {each}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""HTTP/2 beside HTTP/1.1: keep-alive small requests/s and CPU per request,
inline vs vcrypto, in one run.

    .venv/bin/python bench/http2.py [--repeats 1] [--seconds 5] [--conns 16] [--streams 10]

Both configurations (``bench/_configs``: ``inline`` and ``openssl``, the
vcrypto one) stay up against the same ``bench/_upstream.py``; each repeat runs,
on each configuration in turn (order alternating), h2load with HTTP/1.1
keep-alive (``--h1``, one request in flight per connection) and with HTTP/2
(``-m STREAMS`` concurrent streams per connection), ``CONNS`` connections
each. Prints requests/s and the CPU seconds per 1,000 requests of the proxy's
processes by role (workers, and for vcrypto the daemons), and writes every
number to ``--json`` if given. Numbers from a busy machine are noise: check
``uptime``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent))

import _configs  # noqa: E402
import _load  # noqa: E402
import _procs  # noqa: E402
from _certs import make_cert  # noqa: E402
from run import Measure  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--conns", type=int, default=16)
    ap.add_argument("--streams", type=int, default=10, help="HTTP/2 streams in flight per connection (-m)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None, help="write every number here")
    args = ap.parse_args(argv)
    names = ["inline", "openssl"]
    loads = {"http/1.1": dict(http2=False, streams=1), "h2": dict(http2=True, streams=args.streams)}
    results: dict[str, dict[str, list[dict]]] = {n: {k: [] for k in loads} for n in names}
    print(f"load average {os.getloadavg()[0]:.2f}; {args.conns} connections, {args.seconds:g} s per run, "
          f"h2 -m {args.streams}", flush=True)
    with tempfile.TemporaryDirectory(prefix="vcproxy-h2-") as tmp:
        work = Path(tmp)
        certs = {"ecdsa": make_cert(work, "ecdsa"), "rsa": make_cert(work, "rsa")}
        upstream = _procs.Service("upstream", [sys.executable, str(HERE / "_upstream.py"), "--port", "0"],
                                  work, HERE.parent, stdout_pipe=True)
        running = {}
        try:
            addr = f"127.0.0.1:{json.loads(upstream.proc.stdout.readline())['port']}"
            for n in names:
                running[n] = _configs.start(n, work, certs, addr, args.workers, {})
                for kw in loads.values():  # warm-up: connections, pools, the engine
                    _load.h2load(running[n].ports["ecdsa"], 4, 1, "/", 0.2, **kw)
            for i in range(args.repeats):
                for n in (names if i % 2 == 0 else names[::-1]):
                    r = running[n]
                    for proto, kw in loads.items():
                        res = Measure(r, upstream)(
                            lambda r=r, kw=kw: _load.h2load(r.ports["ecdsa"], args.conns, args.seconds, "/", **kw),
                            "requests")
                        results[n][proto].append(res)
                        cpu = res.get("cpu_per_1k", {})
                        proxy_cpu = sum(v for role, v in cpu.items() if role != "upstream")
                        print(f"repeat {i + 1} {n:8s} {proto:8s} {res.get('per_s', 0):8.0f} req/s  "
                              f"failed {res.get('failed', '?')}  proxy CPU {proxy_cpu:.3f} s/1k req ("
                              + ", ".join(f"{k} {v:.3f}" for k, v in sorted(cpu.items())) + ")"
                              + (f"  ERROR {res['error'][:200]}" if "error" in res else ""), flush=True)
        finally:
            for r in running.values():
                r.stop()
            upstream.stop()
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

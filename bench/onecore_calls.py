"""One vcproxy worker in this process under ``openssl s_time -new``: Python
function calls per full handshake (cProfile), a measure that this shared
machine's CPU contention does not move.

    .venv/bin/python bench/onecore_calls.py [--kind ecdsa|rsa] [--seconds 4] [--ref DIR] [--top N]

Why: ``bench/onecore.py``'s CPU µs per handshake swing ±15-20% between two
identical trees in one run when other work shares the two CPUs (the load
generator starves, the worker idles and wakes more); a change worth a few
percent cannot be seen there. The number of Python calls (coroutine resumes
included: each scheduler pass through a task counts) per connection depends
on the code path, not on the contention (it moves a few percent with the
handshake rate: scheduler batching, the 0.25 s metrics flush). It is a
proxy, not CPU: a C call and a Python call count alike.

The worker (``vcproxy.proxy._worker.Worker``, inline provider, no tickets,
one ECDSA P-256 and one RSA-2048 listener, nginx or ``bench/_upstream.py``
upstream as in ``onecore.py``) runs on CPU 0 in this process; four
``s_time`` processes on CPU 1. Profiling covers only the load window (it is
switched on and off from inside the trio thread). ``--ref DIR`` runs the
same measurement on another source tree first (imported from DIR), for a
same-run A/B: run each in its own process (this script re-executes itself).
Hold ``flock /work/wt/bench.lock`` around it like every load.
"""
from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _measure(src: Path, kind: str, seconds: int, top: int) -> int:
    work = Path(tempfile.mkdtemp(prefix="vcproxy-onecore-calls-"))
    (work / "metrics").mkdir()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(work / "metrics")  # before prometheus_client is imported
    sys.path[:0] = [str(src), str(HERE)]
    import trio
    import yaml

    import onecore
    from _certs import make_cert
    from vcproxy.proxy._worker import Worker

    os.sched_setaffinity(0, onecore.PROXY_CPU)
    certs = {k: make_cert(work, k) for k in ("ecdsa", "rsa")}
    up = onecore.Upstream(work)
    ports = {0: onecore._free_port(), 1: onecore._free_port()}
    config = {
        "listeners": [{"name": k, "address": "127.0.0.1", "port": ports[i],
                       "tls": {"certificates": [{"cert": str(c), "key": str(key)}], "tickets": {"enabled": False}}}
                      for i, (k, (c, key)) in enumerate(certs.items())],
        "upstreams": {"up": {"servers": [f"127.0.0.1:{up.port}"], "max_idle_connections": 64}},
        "routes": [{"path_prefix": "/", "upstream": "up"}],
        "workers": 1, "crypto": {"provider": "inline"},
        "logging": {"level": "info", "error_log": str(work / "error.log"), "access_log": None},
        "limits": {"max_connections": 4096},
    }
    (work / "vcproxy.yaml").write_text(yaml.safe_dump(config))
    cnf = work / "openssl-client.cnf"
    cnf.write_text(onecore.OPENSSL_CNF)
    env = onecore._load_env(cnf)
    prof = cProfile.Profile()
    result: dict = {}
    token = None

    def load() -> None:
        try:
            port = ports[0 if kind == "ecdsa" else 1]
            onecore._wait_port(port, 30)
            onecore.run_s_time(port, 2, 1, env)  # warm-up, outside the window
            token.run_sync_soon(prof.enable)
            cpu0 = time.process_time()
            result.update(onecore.run_s_time(port, 4, seconds, env))
            token.run_sync_soon(prof.disable)
            result["cpu_s"] = time.process_time() - cpu0
        finally:
            os.kill(os.getpid(), signal.SIGTERM)  # the worker drains and returns

    worker = Worker(str(work / "vcproxy.yaml"), 0, ports, None)

    async def main() -> int:
        nonlocal token
        token = trio.lowlevel.current_trio_token()
        threading.Thread(target=load, daemon=True).start()
        return await worker.run()

    try:
        trio.run(main)
    finally:
        up.service.stop()
    n = result.get("handshakes")
    if not n:
        print(f"{src}: no handshakes measured", file=sys.stderr)
        return 1
    stats = pstats.Stats(prof)
    calls = sum(v[1] for v in stats.stats.values())
    print(f"{src} {kind}: {n} handshakes; {calls / n:,.0f} Python calls per handshake "
          f"(profiled CPU {result['cpu_s'] / n * 1e6:,.0f} us each: inflated by cProfile, and noisy)", flush=True)
    if top:
        rows = sorted(((v[1] / n, f"{Path(f).name}:{line}({fn})") for (f, line, fn), v in stats.stats.items()),
                      reverse=True)[:top]
        for per, name in rows:
            print(f"  {per:8.2f}  {name}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=("ecdsa", "rsa"), default="ecdsa")
    parser.add_argument("--seconds", type=int, default=4)
    parser.add_argument("--ref", type=Path, default=None, help="another source tree, measured first")
    parser.add_argument("--top", type=int, default=0, help="also list the N most called functions")
    parser.add_argument("--src", type=Path, default=HERE.parent, help=argparse.SUPPRESS)
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        return _measure(args.src.resolve(), args.kind, args.seconds, args.top)
    rc = 0
    for src in ([args.ref] if args.ref else []) + [HERE.parent]:
        rc |= subprocess.call([sys.executable, __file__, "--one", "--src", str(src), "--kind", args.kind,
                               "--seconds", str(args.seconds), "--top", str(args.top)])
    return rc


if __name__ == "__main__":
    sys.exit(main())

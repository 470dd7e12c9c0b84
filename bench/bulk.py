"""Bulk downloads only, inline vs vcrypto, repeated: the quick loop for
tuning the record offload path (``bench/run.py`` runs everything).

    .venv/bin/python bench/bulk.py --repeats 5
    .venv/bin/python bench/bulk.py --repeats 1 --profile /tmp/prof   # py-spy per process
    .venv/bin/python bench/bulk.py --vcrypto-crypto small_record_threshold_bytes=8192

Both configurations (``bench/_configs``: ``inline`` and ``openssl``) stay up;
each repeat runs the bulk workload (h2load, 10 MiB bodies) on both, order
alternating. Prints MB/s per repeat, the median of the same-repeat ratios
vcrypto/inline, CPU per GB by process role, and the daemons' notifications
per request and mean host batch. ``--profile DIR`` runs ``py-spy record``
(in the venv: ``pip install py-spy``; ``--gil`` samples: CPU, not time
preempted in a syscall) on every process of the vcrypto
configuration during one extra bulk run and writes one flame-graph SVG and
one ``--format raw`` file per process there.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent))

import _configs  # noqa: E402
import _load  # noqa: E402
import _procs  # noqa: E402
from _certs import make_cert  # noqa: E402
from run import BULK_PATH, Measure  # noqa: E402


def bulk(r, conns: int, seconds: float) -> dict:
    return _load.h2load(r.ports["ecdsa"], conns, seconds, BULK_PATH)


def profile(r, upstream, conns: int, seconds: float, out: Path) -> None:
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    out.mkdir(parents=True, exist_ok=True)
    procs = []
    for pid, role in r.processes().items():
        for fmt, ext in (("flamegraph", "svg"), ("raw", "txt")):
            procs.append(subprocess.Popen(
                [spy, "record", "--pid", str(pid), "--rate", "200", "--duration", str(int(seconds) + 1),
                 "--format", fmt, "--gil", "-o", str(out / f"{role}-{pid}.{ext}")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    res = Measure(r, upstream)(lambda: bulk(r, conns, seconds), "bytes")
    for p in procs:
        p.wait(timeout=60)
    print(f"profiled run: {res.get('mb_per_s', 0):.1f} MB/s; py-spy output in {out}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=3)
    ap.add_argument("--conns", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--profile", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None, help="write every number here")
    ap.add_argument("--vcrypto-crypto", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args(argv)
    extra = {}
    for item in args.vcrypto_crypto:
        k, _, v = item.partition("=")
        extra[k] = yaml.safe_load(v)
    names = ["inline", "openssl"]
    results: dict[str, list[dict]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory(prefix="vcproxy-bulk-") as tmp:
        work = Path(tmp)
        certs = {"ecdsa": make_cert(work, "ecdsa"), "rsa": make_cert(work, "rsa")}
        upstream = _procs.Service("upstream", [sys.executable, str(HERE / "_upstream.py"), "--port", "0"],
                                  work, HERE.parent, stdout_pipe=True)
        running = {}
        try:
            addr = f"127.0.0.1:{json.loads(upstream.proc.stdout.readline())['port']}"
            for n in names:
                running[n] = _configs.start(n, work, certs, addr, args.workers, extra)
                _load.h2load(running[n].ports["ecdsa"], 4, 1, BULK_PATH, 0.2)  # warm-up
            for i in range(args.repeats):
                for n in (names if i % 2 == 0 else names[::-1]):
                    r = running[n]
                    res = Measure(r, upstream)(lambda r=r: bulk(r, args.conns, args.seconds), "bytes")
                    results[n].append(res)
                a, b = results["inline"][-1], results["openssl"][-1]
                print(f"repeat {i + 1}: inline {a.get('mb_per_s', 0):6.1f} MB/s  vcrypto "
                      f"{b.get('mb_per_s', 0):6.1f} MB/s  ratio {b.get('mb_per_s', 0) / max(1e-9, a.get('mb_per_s', 0)):.2f}"
                      f"  notif/req {b.get('notif_per_req') or 0:.1f}  host batch {b.get('host_batch_mean', 0):.1f}",
                      flush=True)
            if args.profile:
                profile(running["openssl"], upstream, args.conns, args.seconds, args.profile)
        finally:
            for r in running.values():
                r.stop()
            upstream.stop()
    ratios = [b["mb_per_s"] / a["mb_per_s"] for a, b in zip(results["inline"], results["openssl"])
              if "mb_per_s" in a and "mb_per_s" in b]
    if ratios:
        print(f"median: inline {statistics.median(x['mb_per_s'] for x in results['inline']):.1f} MB/s, "
              f"vcrypto {statistics.median(x['mb_per_s'] for x in results['openssl']):.1f} MB/s, "
              f"ratio {statistics.median(ratios):.2f} (same-repeat ratios {', '.join(f'{x:.2f}' for x in ratios)})")
    for n in names:
        roles: dict[str, list[float]] = {}
        for res in results[n]:
            for role, v in res.get("cpu_per_1k", {}).items():
                roles.setdefault(role, []).append(v)
        print(f"{n} CPU s per GB (median): " + ", ".join(f"{k} {statistics.median(v):.2f}"
                                                         for k, v in sorted(roles.items())))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

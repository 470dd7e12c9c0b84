"""vcproxy benchmark: four configurations side by side in one run (``make bench``).

    .venv/bin/python bench/run.py [--mode quick|full] [--runs N] [--only inline,stdlib]

Configurations (``bench/_configs.py``): (a) vcproxy inline, (b) vcproxy +
vcrypto ``openssl``, (c) vcproxy + vcrypto with RSA signing on ``workers``,
(d) a trio proxy on stdlib ssl. Same worker count, same upstream
(``bench/_upstream.py``), two listeners each (ECDSA P-256, RSA-2048).

All configurations are up at once; each workload runs on each of them in
turn (order reversed every other workload), so one row's numbers are taken
seconds apart on a machine whose speed drifts over minutes. Workloads
(``bench/_load.py``): full handshakes/s (ECDSA,
RSA; swept over concurrency; TLS 1.2 beside them at the table's concurrency), resumed handshakes/s, keep-alive small
requests/s (swept), bulk MB/s on 10 MiB downloads, p50/p99 latency at a
fixed rate, and the mixed run (keep-alive p99 at that rate while an RSA-2048
full-handshake storm runs). Around each: CPU seconds of every process of the
configuration (``/proc/<pid>/stat``; proxy workers, supervisor, vcrypto host
and its workers, engine-backend, the upstream) and, for vcrypto,
notifications per request from the daemons' metrics endpoints.

Writes ``bench/results/<UTC time>-<mode>.json`` and ``.md`` (and PNG plots if
matplotlib is importable) and prints the Markdown. Everything runs on
127.0.0.1, every load is bounded in time, and every process started is
stopped by its PID. Numbers from a busy machine are noise: check ``uptime``.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(ROOT))

import _configs  # noqa: E402
import _load  # noqa: E402
import _procs  # noqa: E402
import _report  # noqa: E402
from _certs import make_cert  # noqa: E402

BULK_PATH = f"/bytes?n={10 * 1024 * 1024}"

MODES = {
    # quick: < 3 minutes for the four configurations, one run
    "quick": dict(seconds=2, hs_levels=[2, 8], rsa_levels=[8], hs_default=8, ka_levels=[2, 16],
                  ka_default=16, bulk_conns=4, bulk_seconds=2, rate=200, latency_seconds=2,
                  latency_conns=8, storm_procs=8, mixed_seconds=3, runs=1),
    # full: two consecutive runs, < 15 minutes
    "full": dict(seconds=4, hs_levels=[1, 4, 8, 16], rsa_levels=[1, 4, 8, 16], hs_default=8,
                 ka_levels=[1, 4, 16, 64], ka_default=16, bulk_conns=4, bulk_seconds=4, rate=200,
                 latency_seconds=4, latency_conns=8, storm_procs=8, mixed_seconds=5, runs=2),
}


def machine() -> dict:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        ossl = subprocess.run(["openssl", "version"], capture_output=True, text=True, timeout=10).stdout.strip()
    except OSError:
        ossl = "openssl ?"
    return {"nproc": os.cpu_count(), "model": model, "kernel": platform.platform(),
            "python": platform.python_version(), "openssl": ossl,
            "load_start": " ".join(f"{x:.2f}" for x in os.getloadavg())}


class Measure:
    """CPU per process and metric deltas around one workload of a running configuration."""

    def __init__(self, running: _configs.Running, upstream: _procs.Service):
        self.running = running
        self.upstream = upstream

    def __call__(self, fn, units_field: str) -> dict:
        pids = self.running.processes()
        pids[self.upstream.pid] = "upstream"
        cpu0 = _procs.cpu_snapshot(pids)
        m0 = _procs.scrape(self.running.metrics)
        d0 = {k: _procs.scrape(u) for k, u in self.running.daemon_metrics.items()}
        kids0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        try:
            res = fn()
        except _load.LoadError as exc:
            return {"error": str(exc)[:1000]}
        kids1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        # the load generators' own CPU (they share the 2 cores with the proxy)
        res["load_generator_cpu_s"] = (kids1.ru_utime + kids1.ru_stime) - (kids0.ru_utime + kids0.ru_stime)
        cpu1 = _procs.cpu_snapshot(pids)
        m = _procs.delta(_procs.scrape(self.running.metrics), m0)
        d = {k: _procs.delta(_procs.scrape(u), d0[k]) for k, u in self.running.daemon_metrics.items()}
        cpu = _procs.cpu_by_role(pids, cpu0, cpu1)
        res["cpu_s"] = cpu
        res["processes"] = {str(p): r for p, r in pids.items()}
        units = res.get(units_field) or 0
        if units_field == "bytes":
            units = units / 1e6  # so that "per 1k units" is per 1 GB
        if units:
            res["cpu_per_1k"] = {r: s / units * 1000 for r, s in cpu.items()}
            res["load_generator_per_1k"] = res["load_generator_cpu_s"] / units * 1000
        if m:
            res["proxy_metrics"] = {k: v for k, v in m.items()
                                    if k.startswith(("vcproxy_tls_handshakes_total", "vcproxy_crypto_ops",
                                                     "vcproxy_crypto_fallbacks", "vcproxy_http_requests",
                                                     "vcproxy_upstream_errors"))
                                    and v}
        if d:
            host, backend = d.get("host", {}), d.get("backend", {})
            notif = (backend.get("vcrypto_engine_calls_total", 0) + host.get("vcrypto_host_kicks_total", 0)
                     + host.get("vcrypto_host_calls_total", 0))
            requests = m.get("vcproxy_http_requests_total", 0)
            offloaded = host.get("vcrypto_host_requests_total", 0)
            res["notifications"] = notif
            res["offloaded_ops"] = offloaded
            res["notif_per_req"] = notif / requests if requests else None
            res["notif_per_op"] = notif / offloaded if offloaded else None
            res["host_batch_mean"] = (host.get("vcrypto_host_batch_size_sum", 0)
                                      / max(1.0, host.get("vcrypto_host_batch_size_count", 0)))
        return res


def workloads(s: dict) -> list[tuple[str, object, str]]:
    """(key, fn(running) -> result, unit field) in the order they run."""
    secs = s["seconds"]
    out: list[tuple[str, object, str]] = []
    for k in s["hs_levels"]:
        out.append((f"hs_ecdsa@{k}", lambda r, k=k: _load.Handshakes(r.ports["ecdsa"], k, secs, False).result(),
                    "handshakes"))
    for k in s["rsa_levels"]:
        out.append((f"hs_rsa@{k}", lambda r, k=k: _load.Handshakes(r.ports["rsa"], k, secs, False).result(),
                    "handshakes"))
    # TLS 1.2 full handshakes beside TLS 1.3's, at the table's concurrency
    for cert in ("ecdsa", "rsa"):
        out.append((f"hs12_{cert}", lambda r, cert=cert: _load.Handshakes(
            r.ports[cert], s["hs_default"], secs, False, tls12=True).result(), "handshakes"))
    out.append(("resumed", lambda r: _load.Handshakes(r.ports["ecdsa"], s["hs_default"], secs, True).result(),
                "handshakes"))
    for c in s["ka_levels"]:
        out.append((f"keepalive@{c}", lambda r, c=c: _load.h2load(r.ports["ecdsa"], c, secs), "requests"))
    out.append(("bulk", lambda r: _load.h2load(r.ports["ecdsa"], s["bulk_conns"], s["bulk_seconds"], BULK_PATH),
                "bytes"))
    out.append(("latency", lambda r: _load.FixedRate(r.ports["ecdsa"], s["rate"], s["latency_seconds"],
                                                     s["latency_conns"]).result(), "ok"))

    def mixed(r) -> dict:
        storm = _load.Handshakes(r.ports["rsa"], s["storm_procs"], s["mixed_seconds"], False)
        probe = _load.FixedRate(r.ports["ecdsa"], s["rate"], s["mixed_seconds"] - 1, s["latency_conns"])
        lat, hs = probe.result(), storm.result()
        return lat | {"storm_handshakes": hs["handshakes"], "storm_per_s": hs["per_s"],
                      "handshakes": hs["handshakes"]}

    out.append(("mixed", mixed, "handshakes"))
    return out


def _selected(key: str, only: list[str] | None) -> bool:
    return not only or key.split("@")[0] in only


def one_run(names: list[str], work: Path, certs, upstream: _procs.Service, upstream_addr: str,
            s: dict, workers: int, log, vcrypto_crypto: dict | None = None,
            only_workloads: list[str] | None = None) -> dict:
    """All configurations are started first and stay up (idle ones cost ~nothing);
    each workload then runs on each configuration in turn, the order reversed
    from one workload to the next. Machine speed drifts over minutes here, so
    the numbers of one row are taken within seconds of each other."""
    configs: dict[str, dict] = {}
    running: dict[str, _configs.Running] = {}
    try:
        for name in names:
            t0 = time.perf_counter()
            try:
                running[name] = _configs.start(name, work, certs, upstream_addr, workers, vcrypto_crypto)
                configs[name] = {"startup_s": time.perf_counter() - t0, "workloads": {}}
            except Exception as exc:  # noqa: BLE001 - a configuration that does not start is reported
                configs[name] = {"error": f"start failed: {type(exc).__name__}: {exc}"[:2000]}
                print(f"  {name}: {configs[name]['error'][:500]}", flush=True)
        for name, r in running.items():
            # warm-up: keys parsed, sessions opened, upstream connections pooled in every worker
            try:
                warm = [_load.Handshakes(r.ports["ecdsa"], 2, 1, False), _load.Handshakes(r.ports["rsa"], 2, 1, False)]
                _load.h2load(r.ports["ecdsa"], 8, 1, "/", 0.2)
                for h in warm:
                    h.result()
            except _load.LoadError as exc:
                configs[name]["error"] = f"warm-up: {exc}"[:2000]
        # what an idle configuration costs while the others are measured
        pids = {n: r.processes() for n, r in running.items()}
        cpu0 = {n: _procs.cpu_snapshot(p) for n, p in pids.items()}
        time.sleep(2.0)
        for n, p in pids.items():
            idle = _procs.cpu_by_role(p, cpu0[n], _procs.cpu_snapshot(p))
            configs[n]["idle_cpu_s_per_s"] = sum(idle.values()) / 2.0
        print("  idle CPU s/s: " + ", ".join(f"{n} {c['idle_cpu_s_per_s']:.3f}" for n, c in configs.items()
                                             if "idle_cpu_s_per_s" in c), flush=True)
        order = [n for n in names if n in running]
        for i, (key, fn, unit) in enumerate(w for w in workloads(s) if _selected(w[0], only_workloads)):
            for name in (order if i % 2 == 0 else order[::-1]):
                r = running[name]
                if not r.service.alive():
                    configs[name]["workloads"][key] = {"error": f"proxy exited: {r.service.tail(500)}"}
                    continue
                res = Measure(r, upstream)(lambda r=r, fn=fn: fn(r), unit)
                configs[name]["workloads"][key] = res
                field = ("p99_ms" if key in ("latency", "mixed")
                         else "mb_per_s" if unit == "bytes" else "per_s")
                log(name, key, res, field)
        for name in order:
            w = configs[name]["workloads"]
            for alias, src in (("hs_ecdsa", f"hs_ecdsa@{s['hs_default']}"), ("hs_rsa", f"hs_rsa@{s['hs_default']}"),
                               ("keepalive", f"keepalive@{s['ka_default']}")):
                if src in w:
                    w[alias] = w[src]
    finally:
        for name, r in running.items():
            if not r.service.alive():
                configs[name]["error"] = (configs[name].get("error", "")
                                          + f" proxy had exited: {r.service.tail()}")
            r.stop()
    return configs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=sorted(MODES), default="quick")
    parser.add_argument("--runs", type=int, default=None, help="consecutive runs (default: quick 1, full 2)")
    parser.add_argument("--workers", type=int, default=2, help="workers per proxy (all configurations)")
    parser.add_argument("--only", default=",".join(_configs.NAMES), help="comma-separated configurations")
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument("--workloads", default="",
                        help="comma-separated workload names to run (default: all), e.g. "
                             "hs_ecdsa,hs_rsa,hs12_ecdsa,hs12_rsa")
    parser.add_argument("--vcrypto-crypto", action="append", default=[], metavar="KEY=VALUE",
                        help="extra crypto: key for (b) and (c), e.g. small_record_threshold_bytes=20000")
    args = parser.parse_args(argv)
    s = dict(MODES[args.mode])
    vcrypto_crypto = {}
    for item in args.vcrypto_crypto:
        key, _, val = item.partition("=")
        vcrypto_crypto[key] = yaml.safe_load(val)
    runs = args.runs or s["runs"]
    names = [n for n in args.only.split(",") if n]
    for n in names:
        if n not in _configs.NAMES:
            parser.error(f"unknown configuration {n!r} (one of {', '.join(_configs.NAMES)})")
    for tool in ("openssl", "h2load"):
        if subprocess.run(["sh", "-c", f"command -v {tool}"], capture_output=True).returncode:
            print(f"bench: {tool} not found (make benchdeps installs it)", file=sys.stderr)
            return 2
    started = datetime.datetime.now(datetime.timezone.utc)
    stamp = started.strftime("%Y-%m-%dT%H%MZ")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = {"mode": args.mode, "started": started.isoformat(timespec="seconds"),
              "command": "make bench" if args.mode == "full" else "make bench-quick",
              "argv": [Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])],
              "machine": machine(), "runs": [],
              "settings": s | {"runs": runs, "workers": args.workers, "vcrypto_crypto": vcrypto_crypto}}
    result["settings_text"] = (
        f"{args.workers} workers per proxy; {s['seconds']} s per point; full/resumed handshakes: openssl "
        f"s_time processes (table: {s['hs_default']} concurrent), one `GET /` per connection; keep-alive: "
        f"h2load --h1, {s['ka_default']} connections, 64-byte body; bulk: h2load, {s['bulk_conns']} "
        f"connections, 10 MiB bodies; latency: {s['rate']} req/s open loop on {s['latency_conns']} "
        f"keep-alive connections (bench/_client.py); mixed: the same while {s['storm_procs']} s_time "
        "processes make RSA-2048 full handshakes")

    def log(config, key, w, field):
        if "error" in w:
            print(f"  {config:8} {key:14} ERROR {w['error'][:300]}", flush=True)
        else:
            extra = f" failed={w.get('failed') or w.get('errors') or 0}"
            print(f"  {config:8} {key:14} {field}={w.get(field, float('nan')):.2f}{extra}", flush=True)

    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="vcproxy-bench-") as tmp:
        work = Path(tmp)
        certs = {"ecdsa": make_cert(work, "ecdsa"), "rsa": make_cert(work, "rsa")}
        upstream = _procs.Service("upstream", [sys.executable, str(HERE / "_upstream.py"), "--port", "0"],
                                  work, ROOT, stdout_pipe=True)
        try:
            line = upstream.proc.stdout.readline()
            if not line:
                print(f"bench: upstream did not start: {upstream.tail()}", file=sys.stderr)
                return 1
            upstream_addr = f"127.0.0.1:{json.loads(line)['port']}"
            for i in range(runs):
                t0 = time.perf_counter()
                run: dict = {"configs": {}, "load_start": " ".join(f"{x:.2f}" for x in os.getloadavg())}
                print(f"run {i + 1}/{runs} ({args.mode}), load {os.getloadavg()[0]:.2f}", flush=True)
                run["configs"] = one_run(names, work / f"run{i}", certs, upstream, upstream_addr, s,
                                         args.workers, log, vcrypto_crypto,
                                         [w for w in args.workloads.split(",") if w])
                run["seconds"] = time.perf_counter() - t0
                run["load_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
                result["runs"].append(run)
        finally:
            upstream.stop()
    result["seconds"] = time.perf_counter() - t_start
    result["machine"]["load_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    stem = out_dir / f"{stamp}-{args.mode}"
    result["plots"] = [str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p)
                       for p in _report.plots(result["runs"][-1], stem)]
    if not result["plots"]:
        result["plots_note"] = "matplotlib not installed: no PNG plots (make bench installs it into the venv)"
    md = _report.markdown(result)
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1, sort_keys=False) + "\n")
    stem.with_suffix(".md").write_text(md)
    print()
    print(md)
    print(f"wrote {stem}.json, {stem}.md" + (f", {len(result['plots'])} plots" if result["plots"] else
                                             f" ({result['plots_note']})"))
    print(f"total {result['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

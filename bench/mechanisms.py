"""vcrypto's mechanisms measured in the product: a real ``vcproxy run`` per setting.

    .venv/bin/python bench/mechanisms.py polling [--repeats 2] [--seconds 3]
    .venv/bin/python bench/mechanisms.py fifo    [--repeats 2] [--seconds 5]

``polling``: the two polling layers (``vcrypto.host_poll``,
``vcrypto.backend_poll``) swept over a few settings, the default pool, 2
workers. Per setting: 16 concurrent ``openssl s_time`` full-handshake loops,
then 16 h2load connections downloading 512 KiB bodies (every record
offloaded: ``small_record_threshold_bytes`` at its default), then 10 s of
idle. Reports throughput, CPU per unit of every role (``/proc/PID/stat``),
notifications per offloaded op of each layer (host: kicks + calls per host
request; backend: doorbell wakes + frontend calls per backend request), the
backend's poll passes, and each daemon's idle CPU as % of one core.

``fifo``: the head-of-line cost of the host's global FIFO. The RSA-2048
listener's signatures run on a ``workers`` resource (two processes, as
bench configuration (c)); keep-alive requests at a fixed rate on the ECDSA
listener (``bench/_client.py``, 8 connections, 200 req/s, every record
offloaded: ``small_record_threshold_bytes: 0``) measure p50/p99 while 8
``s_time`` processes make RSA full handshakes; ``vcrypto.fifo`` true vs
false, alternated.

``fifo-host``: the same question without the proxy's own CPU in the way:
a real ``vcrypto-host`` (pool: AEAD on ``openssl``, RSA-2048 signing on a
two-process ``workers`` resource) and the poll-mode driver keep 64 requests
in flight on one data queue, every 8th an RSA signature, the rest 1 KiB
AES-128-GCM seals; per-request latency (enqueue to dequeue) of each kind,
``fifo`` true vs false.

Settings alternate between repeats (ABAB) because this machine's speed
drifts over minutes. Bounded in time; every process is stopped by PID.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(ROOT))

import _configs  # noqa: E402
import _load  # noqa: E402
import _procs  # noqa: E402
from _certs import make_cert  # noqa: E402

DOWNLOAD = f"/bytes?n={512 * 1024}"
IDLE_S = 10.0

POLLING = {
    # name: (host_poll, backend_poll)
    "doorbell/0": ({"mode": "doorbell"}, {"budget_us": 0}),
    "adaptive50/0": ({"mode": "adaptive", "spin_us": 50}, {"budget_us": 0}),
    "adaptive200/50": ({"mode": "adaptive", "spin_us": 200}, {"budget_us": 50}),
    "doorbell/50": ({"mode": "doorbell"}, {"budget_us": 50}),
    "adaptive1000/200": ({"mode": "adaptive", "spin_us": 1000}, {"budget_us": 200}),
}


def _measure(r: _configs.Running, fn, units_key: str) -> dict:
    pids = r.processes()
    cpu0 = _procs.cpu_snapshot(pids)
    m0 = {k: _procs.scrape(u) for k, u in r.daemon_metrics.items()}
    t0 = time.perf_counter()
    res = fn()
    wall = time.perf_counter() - t0
    cpu = _procs.cpu_by_role(pids, cpu0, _procs.cpu_snapshot(pids))
    d = {k: _procs.delta(_procs.scrape(u), m0[k]) for k, u in r.daemon_metrics.items()}
    host, backend = d["host"], d["backend"]
    units = res.get(units_key) or 0
    host_req = host.get("vcrypto_host_requests_total", 0)
    be_req = backend.get("vcrypto_engine_requests_total", 0)
    out = {k: res[k] for k in ("handshakes", "requests", "mb_per_s", "per_s", "p50_ms", "p99_ms",
                               "max_ms", "ok", "errors", "storm_per_s") if k in res}
    out["wall_s"] = wall
    out["cpu_s"] = {k: round(v, 3) for k, v in cpu.items()}
    if units:
        out["cpu_ms_per_unit"] = {k: round(v / units * 1000, 3) for k, v in cpu.items()}
    out["host_ops"] = host_req
    out["host_notif_per_op"] = ((host.get("vcrypto_host_kicks_total", 0) + host.get("vcrypto_host_calls_total", 0))
                                / host_req if host_req else None)
    out["backend_notif_per_op"] = ((backend.get("vcrypto_engine_doorbell_wakes_total", 0)
                                    + backend.get("vcrypto_engine_calls_total", 0)) / be_req if be_req else None)
    out["backend_poll_passes"] = backend.get("vcrypto_engine_poll_passes_total", 0)
    out["host_batch_mean"] = (host.get("vcrypto_host_batch_size_sum", 0)
                              / max(1.0, host.get("vcrypto_host_batch_size_count", 0)))
    out["host_reorder_held"] = host.get("vcrypto_host_reorder_held_total", 0)
    out["fallbacks"] = sum(v for k, v in _procs.scrape(r.metrics).items()
                           if k.startswith("vcproxy_crypto_fallbacks"))
    return out


def idle_cpu(r: _configs.Running, seconds: float = IDLE_S) -> dict[str, float]:
    """% of one core each daemon role used over ``seconds`` of no traffic."""
    time.sleep(1.0)  # let the last connections close
    pids = r.processes()
    cpu0 = _procs.cpu_snapshot(pids)
    time.sleep(seconds)
    cpu = _procs.cpu_by_role(pids, cpu0, _procs.cpu_snapshot(pids))
    return {k: round(100 * v / seconds, 2) for k, v in cpu.items()}


def polling(work: Path, certs, upstream: str, args) -> dict:
    order = args.settings.split(",") if args.settings else list(POLLING)
    for name in order:
        if name not in POLLING:
            raise SystemExit(f"unknown setting {name!r} (one of {', '.join(POLLING)})")
    results: dict[str, list] = {name: [] for name in order}
    for rep in range(args.repeats):
        for name in (order if rep % 2 == 0 else order[::-1]):
            host_poll, backend_poll = POLLING[name]
            r = _configs.start(f"poll-{rep}-{name.replace('/', '_')}", work, certs, upstream, 2,
                               vcrypto_extra={"host_poll": host_poll, "backend_poll": backend_poll})
            try:
                _load.Handshakes(r.ports["ecdsa"], 4, 1, False).result()   # warm-up
                hs = _measure(r, lambda: _load.Handshakes(r.ports["ecdsa"], 16, args.seconds, False).result(),
                              "handshakes")
                bulk = _measure(r, lambda: _load.h2load(r.ports["ecdsa"], 16, args.seconds, DOWNLOAD),
                                "requests")
                idle = idle_cpu(r)
            finally:
                r.stop()
            row = {"handshakes": hs, "downloads": bulk, "idle_cpu_pct": idle, "setting": POLLING[name],
                   "load": os.getloadavg()[0]}
            results[name].append(row)
            print(name, json.dumps(_brief(row)), flush=True)
    return results


def _brief(row: dict) -> dict:
    hs, bulk = row["handshakes"], row["downloads"]
    return {"hs_per_s": round(hs["per_s"], 1), "hs_cpu_ms": hs.get("cpu_ms_per_unit"),
            "hs_notif": _r(hs["host_notif_per_op"]), "hs_be_notif": _r(hs["backend_notif_per_op"]),
            "mb_s": round(bulk.get("mb_per_s", 0), 1), "bulk_notif": _r(bulk["host_notif_per_op"]),
            "bulk_be_notif": _r(bulk["backend_notif_per_op"]), "be_polls": bulk["backend_poll_passes"],
            "idle": row["idle_cpu_pct"], "fallbacks": hs["fallbacks"] + bulk["fallbacks"],
            "load": round(row["load"], 2)}


def _r(x):
    return None if x is None else round(x, 4)


def fifo(work: Path, certs, upstream: str, args) -> dict:
    rest, rsa = _configs._rsa_split()
    pool = {"resources": [{"name": "soft", "kind": "openssl", "capabilities": rest},
                          {"name": "procs", "kind": "workers", "processes": 2, "capabilities": rsa}],
            "policy": "capability"}
    results: dict[str, list] = {"fifo": [], "no-fifo": []}
    for rep in range(args.repeats):
        for name in (["fifo", "no-fifo"] if rep % 2 == 0 else ["no-fifo", "fifo"]):
            r = _configs.start(f"fifo-{rep}-{name}", work, certs, upstream, 2,
                               vcrypto_crypto={"small_record_threshold_bytes": 0},
                               vcrypto_extra={"fifo": name == "fifo", "pool": pool})
            try:
                _load.Handshakes(r.ports["rsa"], 4, 1, False).result()   # warm-up
                quiet = _load.FixedRate(r.ports["ecdsa"], 200, args.seconds - 1, 8).result()

                def mixed():
                    storm = _load.Handshakes(r.ports["rsa"], 8, args.seconds, False)
                    probe = _load.FixedRate(r.ports["ecdsa"], 200, args.seconds - 1, 8)
                    lat, hs = probe.result(), storm.result()
                    return lat | {"handshakes": hs["handshakes"], "storm_per_s": hs["per_s"]}
                storm = _measure(r, mixed, "handshakes")
            finally:
                r.stop()
            row = {"quiet": quiet, "storm": storm, "load": os.getloadavg()[0]}
            results[name].append(row)
            print(name, json.dumps({"quiet_p99_ms": quiet.get("p99_ms"), "storm": storm}), flush=True)
    return results


async def _hol_host(fifo_on: bool, n: int, window: int, tmp: Path) -> dict:
    import socket as _socket
    import subprocess

    import trio
    import yaml
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from vcrypto.driver import DataOp, Driver, SessionParams
    from vcrypto.ops import Alg, Op
    from vcrypto.shm.region import Region
    from vcrypto.wire import virtio_crypto as vc

    rest, rsa_caps = _configs._rsa_split()
    sock = str(tmp / f"hol-{fifo_on}.sock")
    cfg = tmp / f"hol-{fifo_on}.yaml"
    cfg.write_text(yaml.safe_dump({"fifo": fifo_on, "pool": {"resources": [
        {"name": "soft", "kind": "openssl", "capabilities": rest},
        {"name": "procs", "kind": "workers", "processes": 2, "capabilities": rsa_caps}]}}))
    proc = subprocess.Popen([sys.executable, "-m", "vcrypto.host", "--socket", sock, "--config", str(cfg),
                             "--log-level", "WARNING"], cwd=ROOT)
    try:
        for _ in range(400):
            try:
                with _socket.socket(_socket.AF_UNIX) as s:
                    s.connect(sock)
                break
            except OSError:
                time.sleep(0.05)
        der = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        lat: dict[str, list[float]] = {"aead": [], "rsa": []}
        async with await Driver.attach(sock) as drv:
            aead = await drv.create_session(SessionParams(Op.AEAD_SEAL, Alg.AES_128_GCM, key=os.urandom(16)))
            sign = await drv.create_session(SessionParams(Op.SIGN, Alg.RSA_PSS_RSAE_SHA256, key=der))
            region = Region.create("hol", window * 4096)
            h = await drv.register_region(region)
            region.view(0, window * 4096)[:] = os.urandom(window * 4096)
            q = drv.queues[0]
            free = list(range(window))
            sent = done = 0
            before = (await drv.stats())["device"]
            t_start = time.perf_counter()
            with trio.fail_after(300):
                while done < n:
                    batch = []
                    while free and sent < n:
                        slot = free.pop()
                        base = slot * 4096
                        if sent % 8 == 0:
                            op = DataOp(sign, Op.SIGN, src=h.buf(base, 32),
                                        dst=h.buf(base + 1100, vc.max_dst_bytes(Op.SIGN, Alg.RSA_PSS_RSAE_SHA256, 32)),
                                        token=(slot, "rsa", time.perf_counter()))
                        else:
                            op = DataOp(aead, Op.AEAD_SEAL, src=h.buf(base, 1024),
                                        dst=h.buf(base + 1100, 1040), iv=h.buf(base + 3000, 12),
                                        token=(slot, "aead", time.perf_counter()))
                        batch.append(op)
                        sent += 1
                    accepted = q.enqueue_burst(batch) if batch else 0
                    for op in batch[accepted:]:
                        free.append(op.token[0])
                        sent -= 1
                    got = q.dequeue_burst()
                    if not got:
                        await q.wait_used()
                        continue
                    now = time.perf_counter()
                    for c in got:
                        slot, kind, t0 = c.token
                        assert c.status == vc.VIRTIO_CRYPTO_OK, c
                        lat[kind].append((now - t0) * 1000)
                        free.append(slot)
                        done += 1
            wall = time.perf_counter() - t_start
            after = (await drv.stats())["device"]
    finally:
        proc.terminate()
        proc.wait(timeout=20)

    def pct(xs, q):
        xs = sorted(xs)
        return round(xs[min(len(xs) - 1, int(q * len(xs)))], 3)
    return {"aead_p50_ms": pct(lat["aead"], 0.5), "aead_p99_ms": pct(lat["aead"], 0.99),
            "rsa_p50_ms": pct(lat["rsa"], 0.5), "rsa_p99_ms": pct(lat["rsa"], 0.99),
            "ops_per_s": round(n / wall), "reorder_held": after.get("reorder_held", 0) - before.get("reorder_held", 0),
            "load": os.getloadavg()[0]}


def fifo_host(args) -> dict:
    import trio
    results: dict[str, list] = {"fifo": [], "no-fifo": []}
    with tempfile.TemporaryDirectory(prefix="vcproxy-hol-") as tmp:
        for rep in range(args.repeats):
            for name in (["fifo", "no-fifo"] if rep % 2 == 0 else ["no-fifo", "fifo"]):
                row = trio.run(_hol_host, name == "fifo", 4000, 64, Path(tmp))
                results[name].append(row)
                print(name, json.dumps(row), flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["polling", "fifo", "fifo-host"])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=None)
    ap.add_argument("--settings", help="polling: comma-separated subset of the settings")
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args(argv)
    args.seconds = args.seconds or (3.0 if args.what == "polling" else 5.0)
    t0 = time.perf_counter()
    if args.what == "fifo-host":
        result = fifo_host(args)
        for name, rows in result.items():
            print(f"{name}: AES seal p99 {[r['aead_p99_ms'] for r in rows]} ms, p50 "
                  f"{[r['aead_p50_ms'] for r in rows]} ms; RSA p99 {[r['rsa_p99_ms'] for r in rows]} ms; "
                  f"ops/s {[r['ops_per_s'] for r in rows]}; held {[r['reorder_held'] for r in rows]}")
        _write(args, result)
        return 0
    with tempfile.TemporaryDirectory(prefix="vcproxy-mech-") as tmp:
        work = Path(tmp)
        certs = {"ecdsa": make_cert(work, "ecdsa"), "rsa": make_cert(work, "rsa")}
        up = _procs.Service("upstream", [sys.executable, str(HERE / "_upstream.py"), "--port", "0"],
                            work, ROOT, stdout_pipe=True)
        try:
            line = up.proc.stdout.readline()
            if not line:
                print(f"upstream did not start: {up.tail()}", file=sys.stderr)
                return 1
            upstream = f"127.0.0.1:{json.loads(line)['port']}"
            result = (polling if args.what == "polling" else fifo)(work, certs, upstream, args)
        finally:
            up.stop()
    _write(args, result)
    print(f"total {time.perf_counter() - t0:.0f} s")
    if args.what == "fifo":
        for name, rows in result.items():
            p99 = [row["storm"].get("p99_ms") for row in rows]
            print(f"{name}: keep-alive p99 during the RSA storm {p99} ms "
                  f"(median {statistics.median(p99):.1f}); quiet p99 "
                  f"{[row['quiet'].get('p99_ms') for row in rows]}")
    return 0


def _write(args, result: dict) -> None:
    stamp = time.strftime("%Y-%m-%dT%H%MZ", time.gmtime())
    out = Path(args.out) / f"{stamp}-{args.what}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"what": args.what, "seconds": args.seconds, "repeats": args.repeats,
                               "cpus": os.cpu_count(), "results": result}, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(main())

"""Connection capacity under slow clients, with `make run`'s config (config/vcproxy.yaml):

    .venv/bin/python bench/handshake_flood.py --clients 10000 --idle 2000

1. ``--idle`` keep-alive TLS connections after one request each: the RSS
   growth per idle connection;
2. a flood of ``--clients`` connections holding half-sent ClientHellos (5
   bytes of a TLS record, then nothing), kept up as the proxy closes them;
   while it holds, ``--probes`` legitimate clients each open a new TLS
   connection and GET /health: their wall time is what the flood costs them;
   the workers' RSS growth over the flood is the memory per handshaking
   connection.

Everything but the ports (all ephemeral) and the certificate (made per run)
is config/vcproxy.yaml's: 2 workers, crypto.provider vcrypto, default limits.
Prints one JSON object; the shed count is vcproxy_connections_shed_total.
"""
from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "proxy"))

from proxy_testkit import (REPO, Flood, client_context, free_port, make_cert, raise_nofile,  # noqa: E402
                           running_proxy, scrape, timed_request, total, worker_pids)


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def workers_rss(proxy) -> int:
    return sum(rss_bytes(pid) for pid in worker_pids(proxy))


def wait_active(proxy, want: int, timeout_s: float) -> float:
    deadline = time.monotonic() + timeout_s
    seen = 0.0
    while time.monotonic() < deadline:
        seen = total(scrape(proxy.metrics_url), "vcproxy_connections_active")
        if seen >= want:
            break
        time.sleep(0.2)
    return seen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=10000)
    parser.add_argument("--idle", type=int, default=2000)
    parser.add_argument("--probes", type=int, default=20)
    parser.add_argument("--hold-s", type=float, default=15.0, help="how long the flood holds before probing")
    args = parser.parse_args(argv)
    raise_nofile(args.clients + args.idle + 1024)
    tmp = Path(tempfile.mkdtemp(prefix="vcproxy-flood-"))
    (tmp / "idle").mkdir()
    (tmp / "flood").mkdir()
    cert, key = make_cert(tmp, "flood")
    config = yaml.safe_load((REPO / "config" / "vcproxy.yaml").read_text())
    config["listeners"][0].update(port=0)
    config["listeners"][0]["tls"]["certificates"] = [{"cert": str(cert), "key": str(key)}]
    demo_port = free_port()
    config["demo_upstream"]["port"] = demo_port
    config["upstreams"]["demo"]["servers"] = [f"127.0.0.1:{demo_port}"]
    config["metrics"]["port"] = 0
    config["vcrypto"].update(host_metrics=None, backend_metrics=None)
    ctx = client_context(cert)
    out: dict = {"config": "config/vcproxy.yaml (ports, certificate changed)", "clients": args.clients,
                 "idle_connections": args.idle}
    # one fresh proxy per phase: RSS growth is not blurred by memory an earlier phase freed
    with running_proxy(tmp / "idle", config) as proxy:
        timed_request(proxy.port, ctx)
        base = workers_rss(proxy)
        idle = []
        for _ in range(args.idle):
            conn = http.client.HTTPSConnection("127.0.0.1", proxy.port, context=ctx, timeout=60)
            conn.request("GET", "/health")
            conn.getresponse().read()
            idle.append(conn)
        out["idle_rss_growth_bytes"] = workers_rss(proxy) - base
        out["rss_per_idle_connection_bytes"] = round(out["idle_rss_growth_bytes"] / max(1, args.idle))
        for conn in idle:
            conn.close()
    with running_proxy(tmp / "flood", config) as proxy:
        out["probe_before_s"] = round(timed_request(proxy.port, ctx), 4)
        base = workers_rss(proxy)
        started = time.monotonic()
        flood = Flood(proxy.port, args.clients)
        out["flood_open_s"] = round(time.monotonic() - started, 2)
        out["active_during_flood"] = wait_active(proxy, args.clients, 60)
        out["flood_rss_growth_bytes"] = workers_rss(proxy) - base
        out["rss_per_handshaking_connection_bytes"] = round(out["flood_rss_growth_bytes"] / args.clients)
        time.sleep(args.hold_s)  # past handshake_timeout_s: the flood has been renewing itself
        waits = [timed_request(proxy.port, ctx) for _ in range(args.probes)]
        out["probe_s"] = {"max": round(max(waits), 4), "median": round(statistics.median(waits), 4)}
        out["flood_reconnects"] = flood.replaced
        out["active_after_hold"] = wait_active(proxy, 0, 1)
        samples = scrape(proxy.metrics_url)
        out["shed_total"] = total(samples, "vcproxy_connections_shed_total")
        out["handshake_timeouts"] = total(samples, "vcproxy_tls_handshakes_total", result="timeout")
        flood.stop()
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

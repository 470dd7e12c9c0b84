"""Prometheus conventions on all three endpoints, scraped from a real
`vcproxy run` (supervisor, 2 workers, vcrypto-host and engine-backend) after
real TLS traffic through vcrypto; the daemons' reference tables in README.md;
and every metric the Grafana dashboard and the alert rules in deploy/ use.

The rules (https://prometheus.io/docs/practices/naming/): a count that only
goes up is a counter and a counter's name ends in ``_total``; a name ending
in ``_total`` is never a gauge; time is in ``_seconds`` (not ``_s``, ``_ms``,
``_us``, ``_secs``...); no precomputed ratio; every family has a HELP that
says what it counts (three words at least, not its own name).
"""
from __future__ import annotations

import http.client
import json
import re
import signal
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from proxy_testkit import base_config, client_context, free_port, running_proxy, scrape, total
from vcproxy.metrics import METRICS_HELP
from vcrypto.engine.backend._metrics import ENGINE_METRICS
from vcrypto.engine.backend._metrics import reference_table as engine_table
from vcrypto.host.metrics import HOST_METRICS
from vcrypto.host.metrics import reference_table as host_table

REPO = Path(__file__).resolve().parents[2]

#: Counts the issue found typed gauge (or without _total): they must be counters.
KNOWN_MONOTONIC = {
    "vcrypto_host_pool_submitted", "vcrypto_host_pool_succeeded", "vcrypto_host_pool_failed",
    "vcrypto_host_pool_retries", "vcrypto_host_pool_spills", "vcrypto_host_pool_waits",
    "vcrypto_host_pool_not_supported", "vcrypto_host_pool_op_errors",
    "vcrypto_host_pool_resource_completed", "vcrypto_host_pool_resource_assigned",
    "vcrypto_host_pool_resource_errors", "vcrypto_host_pool_resource_timeouts",
    "vcrypto_host_pool_resource_retries", "vcrypto_host_pool_resource_spills",
    "vcrypto_host_pool_resource_unhealthy_marks", "vcrypto_host_pool_resource_readmissions",
    "vcrypto_engine_host_kicks", "vcrypto_engine_host_calls", "vcrypto_engine_requests",
    "vcrypto_engine_cache_hits", "vcrypto_engine_cache_misses", "vcproxy_config_reloads",
}
#: Words that name a count of events (a gauge named for one is a counter in disguise).
MONOTONIC_WORDS = {"submitted", "succeeded", "completed", "assigned", "errors", "timeouts", "retries", "spills",
                   "marks", "readmissions", "kicks", "calls", "restarts", "reloads", "failures", "stalls",
                   "wakes", "polls", "sleeps", "hits", "misses", "destroyed", "attaches", "detaches"}
#: Unit spellings that are not the base unit (seconds, bytes).
BAD_UNITS = {"s", "ms", "us", "ns", "sec", "secs", "msec", "msecs", "usec", "millis", "micros",
             "kb", "kib", "mb", "mib", "gb"}


def parse(text: str) -> dict[str, dict]:
    """family name (as in ``# TYPE``) -> {"type", "help", "samples": [sample names]}."""
    families: dict[str, dict] = {}
    current = None
    for line in text.splitlines():
        if m := re.match(r"# (HELP|TYPE) (\S+) ?(.*)$", line):
            kind, name, rest = m.groups()
            fam = families.setdefault(name, {"type": None, "help": None, "samples": []})
            fam["help" if kind == "HELP" else "type"] = rest
            current = name
        elif line and not line.startswith("#"):
            sample = re.match(r"[a-zA-Z_:][\w:]*", line).group(0)
            owner = current if current is not None and sample.startswith(current) else sample
            families.setdefault(owner, {"type": None, "help": None, "samples": []})["samples"].append(sample)
    return families


def problems(text: str) -> list[str]:
    """Every convention an exposition breaks (empty when it keeps them all)."""
    out = []
    for name, fam in parse(text).items():
        kind, doc = fam["type"], (fam["help"] or "").strip()
        base = name.removesuffix("_total")
        words = base.split("_")
        if kind is None:
            out.append(f"{name}: no # TYPE")
        if kind == "counter" and not name.endswith("_total"):
            out.append(f"{name}: a counter without _total")
        if kind != "counter" and name.endswith("_total"):
            out.append(f"{name}: ends in _total but is typed {kind}")
        if kind == "gauge" and (base in KNOWN_MONOTONIC or words[-1] in MONOTONIC_WORDS):
            out.append(f"{name}: a monotonic count typed gauge")
        if bad := BAD_UNITS.intersection(words):
            out.append(f"{name}: unit {sorted(bad)} instead of _seconds/_bytes")
        if "ratio" in words or "rate" in words:
            out.append(f"{name}: a precomputed ratio (export the counters, let the query divide)")
        stub = {name, base, base.partition("_")[2], base.split("_", 2)[-1]}
        if len(doc.split()) < 3 or doc in stub or doc.replace(" ", "_") in stub:
            out.append(f"{name}: stub HELP {doc!r}")
    return out


def catalogue_problems(text: str, catalogue: dict[str, tuple]) -> list[str]:
    """Exported families missing from the endpoint's catalogue (the README's
    table), or exported with another type."""
    out = []
    for name, fam in parse(text).items():
        if name not in catalogue:
            out.append(f"{name}: exported but not in the catalogue")
        elif catalogue[name][0] != fam["type"]:
            out.append(f"{name}: exported as {fam['type']}, catalogued as {catalogue[name][0]}")
    return out


def proxy_catalogue() -> dict[str, tuple]:
    return {"vcproxy_" + name: entry for name, entry in METRICS_HELP.items()}


# -- the checker itself sees each class of problem ------------------------------------

MAIN_STYLE = """\
# HELP vcrypto_host_pool_resource_completed resource completed
# TYPE vcrypto_host_pool_resource_completed gauge
vcrypto_host_pool_resource_completed{resource="a",kind="openssl"} 3.0
# HELP vcrypto_host_pool_resource_queue_wait_s_total resource queue_wait_s_total
# TYPE vcrypto_host_pool_resource_queue_wait_s_total gauge
vcrypto_host_pool_resource_queue_wait_s_total{resource="a",kind="openssl"} 0.1
# HELP vcrypto_engine_device_up device_up
# TYPE vcrypto_engine_device_up gauge
vcrypto_engine_device_up 1.0
# HELP vcrypto_engine_cache_hit_ratio session cache hit ratio
# TYPE vcrypto_engine_cache_hit_ratio gauge
vcrypto_engine_cache_hit_ratio 0.5
# HELP vcrypto_x_latency_ms request latency in milliseconds
# TYPE vcrypto_x_latency_ms histogram
vcrypto_x_latency_ms_count 1.0
# HELP vcrypto_x_events events seen by the thing
# TYPE vcrypto_x_events counter
vcrypto_x_events 1.0
# HELP vcrypto_x_open_now
# TYPE vcrypto_x_open_now gauge
vcrypto_x_open_now 1.0
"""


def test_the_checker_sees_every_kind_of_problem():
    found = "\n".join(problems(MAIN_STYLE))
    for expected in ("vcrypto_host_pool_resource_completed: a monotonic count typed gauge",
                     "vcrypto_host_pool_resource_queue_wait_s_total: ends in _total but is typed gauge",
                     "vcrypto_host_pool_resource_queue_wait_s_total: unit ['s']",
                     "vcrypto_host_pool_resource_completed: stub HELP",
                     "vcrypto_engine_device_up: stub HELP 'device_up'",
                     "vcrypto_engine_cache_hit_ratio: a precomputed ratio",
                     "vcrypto_x_latency_ms: unit ['ms']",
                     "vcrypto_x_events: a counter without _total",
                     "vcrypto_x_open_now: stub HELP ''"):
        assert expected in found, (expected, found)
    good = ("# HELP vcrypto_x_events_total events seen by the thing\n# TYPE vcrypto_x_events_total counter\n"
            "vcrypto_x_events_total 1.0\n")
    assert problems(good) == []


# -- the real endpoints ---------------------------------------------------------------

@pytest.fixture(scope="module")
def expositions(tmp_path_factory, certs, upstream):
    """The three endpoints' text after real traffic: TLS handshakes and
    requests through vcrypto (sign, ECDH, records), one SIGHUP, one upstream error."""
    host_m, backend_m = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    config = base_config(upstream.address, certs["a"], workers=2, crypto={
        "provider": "vcrypto", "small_record_threshold_bytes": 0},
        vcrypto={"host_metrics": host_m, "backend_metrics": backend_m})
    config["upstreams"]["dead"] = {"servers": [f"127.0.0.1:{free_port()}"], "retries": 0}
    config["routes"].insert(0, {"path_prefix": "/dead", "upstream": "dead"})
    with running_proxy(tmp_path_factory.mktemp("conventions"), config) as proxy:
        ctx = client_context(certs["a"][0])
        for _ in range(4):
            conn = http.client.HTTPSConnection("127.0.0.1", proxy.port, context=ctx, timeout=30)
            for path in ("/", "/bytes?n=40000", "/dead"):
                conn.request("GET", path)
                conn.getresponse().read()
            conn.close()
        proxy.signal(signal.SIGHUP)
        proxy.wait_event("reloaded", count=2)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # counted at connection close, and once a second
            m = scrape(proxy.metrics_url)
            if total(m, "vcproxy_http_requests_total") >= 12 and total(m, "vcproxy_connections_active") == 0:
                break
            time.sleep(0.1)
        out = {}
        for name, url in (("proxy", proxy.metrics_url), ("host", f"http://{host_m}/metrics"),
                          ("backend", f"http://{backend_m}/metrics")):
            out[name] = urllib.request.urlopen(url, timeout=10).read().decode()
        yield out


@pytest.mark.parametrize("endpoint", ["proxy", "host", "backend"])
def test_every_endpoint_keeps_the_conventions(expositions, endpoint):
    text = expositions[endpoint]
    assert len(parse(text)) >= 15, text   # real traffic: the families are there
    assert problems(text) == [], text


@pytest.mark.parametrize("endpoint, catalogue", [
    ("proxy", proxy_catalogue()), ("host", HOST_METRICS), ("backend", ENGINE_METRICS)])
def test_every_exported_family_is_catalogued(expositions, endpoint, catalogue):
    assert catalogue_problems(expositions[endpoint], catalogue) == []


def test_the_traffic_reached_the_daemons(expositions):
    host, backend, proxy = (parse(expositions[k]) for k in ("host", "backend", "proxy"))
    assert "vcrypto_host_pool_resource_completed_total" in host
    assert "vcrypto_engine_requests_total" in backend and "vcrypto_engine_cache_hit_ratio" not in backend
    assert "vcproxy_config_reloads_total" in proxy and "vcproxy_certificate_not_after_timestamp_seconds" in proxy
    m = re.search(r'^vcproxy_config_reloads_total\{result="ok"\} (\S+)$', expositions["proxy"], re.M)
    assert m and float(m.group(1)) == 1.0


def test_the_catalogues_keep_the_conventions():
    """What no scrape shows (labelled series not created yet) is checked on the definitions."""
    text = []
    for name, (kind, _labels, doc) in {**proxy_catalogue(), **HOST_METRICS, **ENGINE_METRICS}.items():
        text.append(f"# HELP {name} {doc}\n# TYPE {name} {kind}\n")
    assert problems("".join(text)) == []


@pytest.mark.parametrize("tag, table", [("host-metrics-reference", host_table),
                                        ("engine-metrics-reference", engine_table)])
def test_readme_lists_the_daemons_metrics(tag, table):
    readme = (REPO / "README.md").read_text()
    assert f"<!-- {tag}:begin -->\n" + table() + f"<!-- {tag}:end -->" in readme, (
        f"README.md's {tag} block is stale: regenerate it from the catalogue "
        f"(python -m vcrypto.host.metrics / python -m vcrypto.engine.backend._metrics)")


# -- deploy/: every metric a dashboard panel or an alert uses is exported --------------

def _exported_series() -> set[str]:
    """Every series name the three catalogues define (histograms: _bucket, _sum, _count)."""
    names = set()
    for name, (kind, *_rest) in {**proxy_catalogue(), **HOST_METRICS, **ENGINE_METRICS}.items():
        names.add(name)
        if kind == "histogram":
            names.update(name + suffix for suffix in ("_bucket", "_sum", "_count"))
    return names


def _metric_names(expr: str) -> set[str]:
    # identifiers that look like our metrics; PromQL functions and labels never start with vc
    return set(re.findall(r"\b(vc(?:proxy|rypto)_[a-zA-Z0-9_]+)", expr))


def _dashboard_exprs() -> list[str]:
    dash = json.loads((REPO / "deploy/grafana/vcproxy.json").read_text())
    exprs = []

    def walk(panels):
        for p in panels:
            exprs.extend(t["expr"] for t in p.get("targets", []) if "expr" in t)
            walk(p.get("panels", []))

    walk(dash["panels"])
    exprs.extend(v.get("query", "") if isinstance(v.get("query"), str) else v.get("query", {}).get("query", "")
                 for v in dash.get("templating", {}).get("list", []))
    return exprs


def _alert_exprs() -> list[str]:
    rules = yaml.safe_load((REPO / "deploy/prometheus/alerts.yaml").read_text())
    return [r["expr"] for g in rules["groups"] for r in g["rules"]]


@pytest.mark.parametrize("source", ["dashboard", "alerts"])
def test_deploy_references_only_exported_metrics(source):
    exprs = _dashboard_exprs() if source == "dashboard" else _alert_exprs()
    used = set().union(*(_metric_names(e) for e in exprs))
    assert len(used) >= 8, used
    missing = sorted(used - _exported_series())
    assert missing == [], f"{source} uses metrics no endpoint exports: {missing}"


def test_the_reference_check_sees_a_missing_metric():
    assert _metric_names('rate(vcproxy_nope_total[5m]) / vcrypto_engine_requests_total') - _exported_series() \
        == {"vcproxy_nope_total"}

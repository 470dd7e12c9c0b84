"""vcproxy's Prometheus metrics, aggregated over all worker processes.

Why prometheus_client's multiprocess mode (and not workers reporting to the
supervisor): every worker writes its counters into its own mmap'd file in a
directory the supervisor creates (``PROMETHEUS_MULTIPROC_DIR``); the
supervisor's ``/metrics`` merges the files at scrape time. No IPC code, no
lost increments when a worker crashes (its counter files stay, so totals
never go backwards across restarts), and a scrape never waits on a busy
worker. The cost is a file per metric type per worker and that gauges need
an explicit aggregation mode (``livesum`` for active connections: dead
workers' files are dropped by ``mark_process_dead``).

The environment variable must be set before ``prometheus_client`` is
imported in a worker, so this module imports it lazily and the supervisor
puts the variable in the workers' environment.

Metric names (all prefixed ``vcproxy_``) are listed in ``METRICS_HELP``,
which is also the documentation the README prints. Those in
``SUPERVISOR_METRICS`` describe the supervisor's own state (reloads,
certificates, restarts, build) and are computed at scrape time by
``vcproxy.metrics_endpoint.SupervisorCollector``, never by a worker: a
SIGHUP is one event, however many workers apply it.
"""
from __future__ import annotations

import os
from typing import Any

ENV_DIR = "PROMETHEUS_MULTIPROC_DIR"

LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

#: name -> (type, labels, help). The single list of what vcproxy exports.
METRICS_HELP: dict[str, tuple[str, tuple[str, ...], str]] = {
    "connections_total": ("counter", ("listener",), "client TCP connections accepted, by listener name"),
    "connections_active": ("gauge", ("listener",), "client connections open now (all workers)"),
    "connections_shed_total": ("counter", ("listener", "phase"),
                               "connections closed to make room for new clients when limits.max_connections "
                               "were all taken, by phase: handshake (not done yet), idle (keep-alive)"),
    "tls_handshakes_total": ("counter", ("listener", "result", "version", "cipher_suite", "resumed", "group"),
                             "TLS handshakes by result (ok, error, timeout), version (1.2, 1.3), suite, resumption, "
                             "key exchange group (X25519MLKEM768, x25519, ...)"),
    "proxy_protocol_total": ("counter", ("listener", "result"),
                             "PROXY protocol headers on listeners that require one, by result: ok, untrusted "
                             "(peer not in trusted_proxies, closed unread), invalid, timeout"),
    "tls_handshake_seconds": ("histogram", ("listener",), "TLS handshake latency, successful handshakes"),
    "bytes_received_total": ("counter", ("listener",), "bytes received from clients (on the wire; added every 64 KiB of a connection and at its close)"),
    "bytes_sent_total": ("counter", ("listener",), "bytes sent to clients (on the wire; added every 64 KiB of a connection and at its close)"),
    "http_requests_total": ("counter", ("listener", "status", "http_version"), "HTTP requests (HTTP/2: streams) by response status and HTTP version (1.0, 1.1, 2)"),
    "http_request_seconds": ("histogram", ("listener",), "HTTP request latency, head received to response end"),
    "tcp_sessions_total": ("counter", ("listener", "result"), "tcp-mode sessions (mode: tcp listeners) that ended, by result"),
    "upstream_errors_total": ("counter", ("upstream", "kind"), "upstream request failures by upstream name and kind: connect, timeout, protocol, closed"),
    "upstream_up": ("gauge", ("upstream", "server"),
                    "1 if every live worker holds the upstream server healthy, 0 if at least one has marked it "
                    "unhealthy (health_check.unhealthy_after failed probes or connects) and routes around it "
                    "(each worker runs its own checks; the minimum over workers)"),
    "upstream_health_transitions_total": ("counter", ("upstream", "server", "to"),
                                          "upstream server health changes (to: up or down), counted by each worker "
                                          "that saw the change (each runs its own checks: one outage with N "
                                          "workers counts up to N)"),
    "upstream_response_seconds": ("histogram", ("upstream",),
                                  "upstream response time: request head sent to response head received "
                                  "(HTTP/1.1 and HTTP/2 requests that got a response)"),
    "crypto_ops_total": ("counter", ("op", "provider"),
                         "crypto operations (ecdh, sign, aead_seal, aead_open) by the provider they were handed "
                         "to; records under the small-record threshold are sealed in-process: provider=inline"),
    "crypto_fallbacks_total": ("counter", ("op", "reason"),
                               "vcrypto ops (already in crypto_ops_total as provider=vcrypto) computed "
                               "in-process instead, counted as they run: engine away "
                               "(reason=engine_unavailable), failed by the device (reason=engine_error), "
                               "a failed op redone inline (reason=error type); engine unreachable at start "
                               "(op=startup, once per worker)"),
    "crypto_keyless_failures_total": ("counter", ("key_ref",),
                                      "keyless signatures (certificates[].key_ref) that failed: only "
                                      "vcrypto-host holds the key, so the handshake failed (no in-process "
                                      "fallback exists)"),
    "crypto_engine_stalls_total": ("counter", (),
                                   "times a worker's engine frontend gave up on a hung engine-backend (a "
                                   "request or control reply outstanding past twice "
                                   "crypto.stall_timeout_s): its requests were redone in-process; a hung "
                                   "host is counted by the backend (vcrypto_engine_host_stalls_total)"),
    "crypto_engine_doorbells_total": ("counter", (),
                                      "doorbells the workers' engine frontends rang to wake a sleeping "
                                      "engine-backend"),
    "crypto_key_shares_total": ("counter", ("event",),
                                "pre-generated ECDHE key shares of the workers' pools (crypto.key_share_pool), "
                                "by event: generated (by an offloaded refill), used (a full handshake took one: "
                                "its key exchange and signature went to the engine together), missed (none in "
                                "stock: that handshake ran the one-op key exchange first), expired (discarded "
                                "unused after crypto.key_share_lifetime_s)"),
    "crypto_key_share_refill_failures_total": ("counter", (),
                                               "key-share pool refills that failed or were skipped because the "
                                               "engine was away (handshakes meanwhile run the one-op key "
                                               "exchange; retried a second later)"),
    "crypto_engine_attached": ("gauge", (),
                               "workers whose engine frontend is attached to the engine-backend with the host "
                               "device up (their crypto is offloaded); the others compute in-process"),
    "worker_reload_failures_total": ("counter", (),
                                     "reloads the supervisor accepted that a worker failed to apply (it kept its "
                                     "previous config; the reload_failed event says why)"),
    # the supervisor's own (SUPERVISOR_METRICS), read live at scrape time
    "worker_restarts_total": ("counter", (), "worker processes restarted after they died (supervisor)"),
    "daemon_restarts_total": ("counter", ("daemon",),
                              "vcrypto daemons / demo upstream restarted after they died, by daemon name"),
    "config_reloads_total": ("counter", ("result",),
                             "SIGHUP config reloads, counted once by the supervisor, by result: ok (sent to the "
                             "workers) or rejected (the file, a certificate or a change that needs a restart was "
                             "refused; nothing changed)"),
    "config_last_reload_successful": ("gauge", (),
                                      "1 if the last config load (start-up or SIGHUP) was accepted, 0 if the last "
                                      "SIGHUP was rejected"),
    "config_last_reload_success_timestamp_seconds": ("gauge", (),
                                                     "Unix time of the last accepted config load (start-up or "
                                                     "SIGHUP)"),
    "certificate_not_after_timestamp_seconds": ("gauge", ("listener", "name"),
                                                "Unix time at which the leaf certificate serving an SNI name "
                                                "expires, per listener (name: the certificate's names[] or SANs; "
                                                "refreshed on every accepted reload)"),
    "build_info": ("gauge", ("version", "python", "openssl"),
                   "always 1; the labels name the vcproxy version, the Python version and the OpenSSL that "
                   "cryptography links"),
}


#: Exported by the supervisor itself (``vcproxy.metrics_endpoint``), not by
#: the workers' multiprocess files: they describe the supervisor's state.
SUPERVISOR_METRICS = frozenset({
    "worker_restarts_total", "daemon_restarts_total", "config_reloads_total", "config_last_reload_successful",
    "config_last_reload_success_timestamp_seconds", "certificate_not_after_timestamp_seconds", "build_info"})

#: How the supervisor merges a gauge over the workers' files (prometheus_client
#: multiprocess_mode; dead workers' files are dropped by the ``live`` modes).
#: Default ``livesum`` (connections open now). ``upstream_up`` is ``livemin``:
#: every worker probes on its own, so 0 means some live worker routes around
#: the server; a sum would read 2 for "up" with two workers.
GAUGE_MODES = {"upstream_up": "livemin"}


class Metrics:
    """The metric objects of one worker process (create after the env is set)."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        def make(name: str) -> Any:
            kind, labels, doc = METRICS_HELP[name]
            full = "vcproxy_" + name.removesuffix("_total")
            if kind == "counter":
                return Counter(full, doc, labels)
            if kind == "gauge":
                return Gauge(full, doc, labels, multiprocess_mode=GAUGE_MODES.get(name, "livesum"))
            return Histogram(full, doc, labels, buckets=LATENCY_BUCKETS_S)

        for name in METRICS_HELP:
            if name not in SUPERVISOR_METRICS:
                setattr(self, name, make(name))


_metrics: Metrics | None = None


def metrics() -> Metrics:
    global _metrics
    if _metrics is None:
        _metrics = Metrics()
    return _metrics


def multiprocess_registry():
    """A registry that merges every worker's files (for the supervisor's endpoint)."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=os.environ.get(ENV_DIR))
    return registry


def mark_process_dead(pid: int, directory: str) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, directory)


def help_table() -> str:
    rows = ["| metric | type | labels | meaning |", "|---|---|---|---|"]
    for name, (kind, labels, doc) in METRICS_HELP.items():
        rows.append(f"| `vcproxy_{name}` | {kind} | {', '.join(labels) or '-'} | {doc} |")
    return "\n".join(rows) + "\n"

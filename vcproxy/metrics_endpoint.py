"""The supervisor's HTTP endpoint: metrics, liveness and readiness.

Served from a thread (stdlib ``wsgiref`` + prometheus_client's WSGI app), so
a scrape or a probe never waits on the supervisor's trio loop, and the
loop never waits on a slow scraper. Paths:

- ``metrics.path`` (default ``/metrics``): every worker's multiprocess files
  merged, plus the supervisor's own metrics (``SupervisorCollector``);
- ``/healthz``: 200 ``ok`` while the supervisor runs (a liveness probe: if
  this stops answering, the process is wedged);
- ``/readyz``: 200 ``ready`` when the listeners are served (start-up done,
  not draining, at least one worker up) and crypto can be done (vcrypto
  attached in every worker, or ``crypto.fallback`` lets a worker compute
  in-process); else 503 with a one-line reason;
- anything else: 404.

The supervisor passes two callables: ``readiness() -> (ok, reason)`` and
the state the collector reads (``SupervisorState``); both are plain reads
of the supervisor's attributes (the GIL makes them consistent enough for a
probe: each value is read whole).
"""
from __future__ import annotations

import platform
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from vcproxy.metrics import METRICS_HELP


@dataclass
class SupervisorState:
    """What the supervisor's own metrics report; the supervisor updates it."""

    worker_restarts: Callable[[], int] = lambda: 0
    daemon_restarts: Callable[[], dict[str, int]] = dict
    reloads: dict[str, int] = field(default_factory=lambda: {"ok": 0, "rejected": 0})
    last_reload_ok: bool = True
    last_reload_success_s: float = field(default_factory=time.time)
    #: (listener, SNI name) -> not-after (Unix time), replaced on each accepted reload
    certificates: dict[tuple[str, str], float] = field(default_factory=dict)

    def set_certificates(self, rows: list[tuple[str, str, float]]) -> None:
        certs: dict[tuple[str, str], float] = {}
        for listener, name, not_after in rows:
            certs.setdefault((listener, name), not_after)  # the first certificate serving a name wins
        self.certificates = certs


def build_labels() -> list[str]:
    """vcproxy_build_info's label values: version, python, openssl."""
    from cryptography.hazmat.backends.openssl.backend import backend

    from vcproxy import __version__

    return [__version__, platform.python_version(), backend.openssl_version_text()]


class SupervisorCollector:
    """The supervisor's metrics (``vcproxy.metrics.SUPERVISOR_METRICS``), read live at scrape time."""

    def __init__(self, state: SupervisorState) -> None:
        self.state = state
        self._build = build_labels()

    @staticmethod
    def _family(name: str):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        kind, labels, doc = METRICS_HELP[name]
        if kind == "counter":
            return CounterMetricFamily("vcproxy_" + name.removesuffix("_total"), doc, labels=list(labels))
        return GaugeMetricFamily("vcproxy_" + name, doc, labels=list(labels))

    def collect(self):
        st = self.state
        fam = self._family("worker_restarts_total")
        fam.add_metric([], st.worker_restarts())
        yield fam
        fam = self._family("daemon_restarts_total")
        for name, n in st.daemon_restarts().items():
            fam.add_metric([name], n)
        yield fam
        fam = self._family("config_reloads_total")
        for result, n in dict(st.reloads).items():
            fam.add_metric([result], n)
        yield fam
        fam = self._family("config_last_reload_successful")
        fam.add_metric([], 1 if st.last_reload_ok else 0)
        yield fam
        fam = self._family("config_last_reload_success_timestamp_seconds")
        fam.add_metric([], st.last_reload_success_s)
        yield fam
        fam = self._family("certificate_not_after_timestamp_seconds")
        for (listener, name), not_after in sorted(st.certificates.items()):
            fam.add_metric([listener, name], not_after)
        yield fam
        fam = self._family("build_info")
        fam.add_metric(self._build, 1)
        yield fam


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True   # a stuck scraper never holds the supervisor's exit


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the stdlib's signature
        """Probes every few seconds would flood stderr."""


def _app(registry, metrics_path: str, readiness: Callable[[], tuple[bool, str]]):
    from prometheus_client import make_wsgi_app

    metrics_app = make_wsgi_app(registry)

    def app(environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path == metrics_path:
            return metrics_app(environ, start_response)
        if path == "/healthz":
            status, body = "200 OK", b"ok\n"
        elif path == "/readyz":
            ok, reason = readiness()
            status, body = ("200 OK", b"ready\n") if ok else ("503 Service Unavailable",
                                                              f"not ready: {reason}\n".encode())
        else:
            status, body = "404 Not Found", f"not found; metrics are at {metrics_path}\n".encode()
        start_response(status, [("Content-Type", "text/plain; charset=utf-8"),
                                ("Content-Length", str(len(body)))])
        return [body]

    return app


class MetricsEndpoint:
    """The HTTP server thread on ``metrics.address:metrics.port``."""

    def __init__(self, address: str, port: int, metrics_path: str, registry,
                 readiness: Callable[[], tuple[bool, str]]) -> None:
        family, _, _, _, sockaddr = socket.getaddrinfo(address, port, type=socket.SOCK_STREAM,
                                                       flags=socket.AI_PASSIVE)[0]

        class Server(_Server):
            address_family = family

        self.server = make_server(sockaddr[0], port, _app(registry, metrics_path, readiness), Server,
                                  handler_class=_QuietHandler)
        self.port = self.server.server_port
        self._thread = threading.Thread(target=self.server.serve_forever, name="metrics", daemon=True)
        self._thread.start()

    def shutdown(self) -> None:
        self.server.shutdown()
        self.server.server_close()

"""A vcrypto daemon's Prometheus endpoint (``--metrics HOST:PORT``), and what
its bind failing means to whoever supervises the daemon.

The endpoint is bound first, before the daemon creates its unix socket: a
supervisor that takes the socket for readiness then never sees a daemon
that is about to fail as a ready one. A bind that fails (the port is taken
by another process, the address is not this machine's, a privileged port) is
not something a restart fixes, so the daemon prints one line naming the
address and exits with ``EXIT_METRICS_UNAVAILABLE``; a supervisor must not
restart it on that status (vcproxy's supervisor does not; a systemd unit
says ``RestartPreventExitStatus=78``). The value is sysexits.h's EX_CONFIG:
the configuration asks for something this machine cannot give.
"""
from __future__ import annotations

#: Exit status of a daemon whose ``--metrics`` address cannot be bound.
EXIT_METRICS_UNAVAILABLE = 78


class MetricsEndpointError(Exception):
    """The endpoint cannot be served; the message names the address and why."""


def parse_address(spec: str) -> tuple[str, int]:
    """``HOST:PORT`` / ``[V6]:PORT`` / ``:PORT`` (127.0.0.1) -> (host, port)."""
    host, sep, port = spec.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise MetricsEndpointError(f"--metrics {spec}: expected HOST:PORT")
    return host.strip("[]") or "127.0.0.1", int(port)


def start_metrics_endpoint(spec: str, registry) -> tuple[str, int]:
    """Serve ``registry`` at ``spec`` from a background thread; returns the
    bound (host, port) (port 0 picks one). Collectors may be registered
    later: a scrape before that gets an empty page."""
    from prometheus_client import start_http_server

    host, port = parse_address(spec)
    try:
        server, _thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:  # EADDRINUSE, EADDRNOTAVAIL, EACCES, a host name that does not resolve
        reason = exc.strerror or str(exc)
        raise MetricsEndpointError(f"--metrics {spec}: cannot bind {host}:{port}: {reason}") from exc
    return host, server.server_address[1]

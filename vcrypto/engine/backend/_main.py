"""vcrypto-engine-backend: the daemon (``python -m vcrypto.engine.backend``).

One engine-backend per device: it serves every frontend (proxy worker) of a
tenant on a unix socket and drives one ``vcrypto-host`` device through
``vcrypto.driver`` (or, with ``--no-host``, computes in its own process).
How the loop works is in ``_loop`` (theory of operation); the shared-memory
layouts are in ``vcrypto.engine.contract``.

Logs are ``vcrypto._log`` JSON lines on ``--log`` (stderr, stdout or a file):
``listening`` once frontends may attach, ``metrics_listening`` with the bound
port. SIGUSR1 reopens a log file (logrotate); SIGUSR2 dumps every thread's
stack (``faulthandler``) to stderr.
"""
from __future__ import annotations

import argparse
import faulthandler
import signal
import sys
from collections.abc import Callable

from vcrypto import admin, sdnotify
from vcrypto._log import configure_daemon, reopen_logged
from vcrypto._unixsock import DEFAULT_SOCKET_MODE, SocketAccess, SocketAccessError
from vcrypto.driver import check_queue_size
from vcrypto.metrics_endpoint import EXIT_METRICS_UNAVAILABLE, MetricsEndpointError, start_metrics_endpoint

from ..contract import Geometry
from ._admin import AdminThread
from ._device import CryptoDevice, LocalDevice
from ._loop import Backend, BackendConfig


# -- entry point ---------------------------------------------------------------------------

def _parse(argv):
    p = argparse.ArgumentParser(prog="vcrypto-engine-backend",
                                description="vcrypto engine backend: serves frontends, "
                                            "drives one vcrypto-host device",
                                epilog="Under systemd Type=notify, READY=1 is sent to "
                                       "$NOTIFY_SOCKET once --socket listens, STOPPING=1 on "
                                       "SIGTERM/SIGINT.")
    p.add_argument("--socket", required=True, help="unix socket frontends attach to")
    p.add_argument("--socket-mode", metavar="MODE", default=f"{DEFAULT_SOCKET_MODE:04o}",
                   help="octal mode of the --socket file, set before it listens: the proxy "
                        "workers' user needs write permission to attach (default: %(default)s)")
    p.add_argument("--socket-group", metavar="GROUP",
                   help="group (name or gid) of the --socket file; the daemon's user must be a "
                        "member (default: the daemon's group)")
    host = p.add_mutually_exclusive_group(required=True)
    host.add_argument("--host-socket", help="vcrypto-host unix socket")
    host.add_argument("--no-host", action="store_true",
                      help="run requests in this process (start-up fallback mode)")
    p.add_argument("--metrics", help="HOST:PORT for the Prometheus endpoint (port 0 = any)")
    p.add_argument("--admin-socket",
                   help="unix socket of the admin endpoint (vcrypto status; default: "
                        "backend.admin.sock next to --socket; 'none': no admin socket)")
    p.add_argument("--batch-max", type=int, default=32)
    p.add_argument("--batch-deadline-us", type=float, default=0.0)
    p.add_argument("--poll-budget-us", type=float, default=None)
    p.add_argument("--inflight-hold-us", type=float, default=BackendConfig.inflight_hold_us,
                   help="with requests in flight at the host, wait up to this long for its "
                        "completion call without advertising sleep (arrivals ring no doorbell, "
                        "they join the next batch); 0: always advertise")
    p.add_argument("--slots", type=int, default=256, help="request slots per frontend")
    p.add_argument("--queue-size", type=int, default=256,
                   help="entries of the data virtqueue to the host (requests in flight there)")
    p.add_argument("--aead-sessions", action="store_true",
                   help="send traffic keys as host sessions (session create/close per "
                        "connection direction) instead of stateless AEAD requests: what a host "
                        "without VIRTIO_CRYPTO_F_AEAD_STATELESS_MODE gets; for comparison")
    p.add_argument("--stall-timeout-s", type=float, default=BackendConfig.stall_timeout_s,
                   help="a request outstanding at the host longer than this means the host is "
                        "hung: it is failed like a dead one (reconnect with backoff)")
    p.add_argument("--log", default="stderr", help="JSON log: stderr, stdout or a file path")
    p.add_argument("--log-level", default="info", type=str.lower,
                   choices=["debug", "info", "warning", "error"])
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    try:
        out = configure_daemon(args.log, args.log_level)
    except OSError as exc:
        print(f"vcrypto-engine-backend: --log {args.log}: {exc}", file=sys.stderr)
        return 2

    def start_failed(message: str) -> int:
        out.error("start_failed", error=message)
        return 2

    try:
        check_queue_size(args.queue_size)
    except ValueError as exc:
        return start_failed(f"vcrypto-engine-backend: --queue-size: {exc}")
    if not args.stall_timeout_s > 0:
        return start_failed("vcrypto-engine-backend: --stall-timeout-s must be > 0")
    try:
        access = SocketAccess.parse(args.socket_mode, args.socket_group)
    except SocketAccessError as exc:
        return start_failed(f"vcrypto-engine-backend: --{exc.field.replace('_', '-')}: {exc.message}")
    cfg = BackendConfig(socket_path=args.socket, host_socket=args.host_socket, socket_access=access,
                        batch_max=args.batch_max, batch_deadline_us=args.batch_deadline_us,
                        stall_timeout_s=args.stall_timeout_s,
                        stateless_aead=not args.aead_sessions,
                        inflight_hold_us=args.inflight_hold_us,
                        geometry=Geometry(ring_capacity=max(256, 1 << (args.slots - 1).bit_length()),
                                          slot_count=args.slots))
    if args.poll_budget_us is not None:
        cfg.poll_budget_us = args.poll_budget_us
    registry = None
    if args.metrics:
        # Bound before the frontends' socket exists (vcrypto.metrics_endpoint):
        # a port in use is one line and a status the supervisor does not restart on.
        from prometheus_client import CollectorRegistry

        registry = CollectorRegistry()
        try:
            mhost, mport = start_metrics_endpoint(args.metrics, registry)
        except MetricsEndpointError as exc:
            out.error("start_failed", error=f"vcrypto-engine-backend: {exc}")
            return EXIT_METRICS_UNAVAILABLE
        out.info("metrics_listening", address=mhost, port=mport)
    if args.no_host:
        factory: Callable[[], CryptoDevice] = LocalDevice
    else:
        from ._hostdevice import HostDevice

        def factory() -> CryptoDevice:
            # The loop waits for the attempt: a host just failed as hung (it
            # accepts connections, never answers) is probed with the stall bound.
            hung = backend.host_hung
            return HostDevice(args.host_socket, geometry=cfg.geometry, queue_size=args.queue_size,
                              attach_timeout_s=min(5.0, args.stall_timeout_s) if hung else None)
    try:
        backend = Backend(cfg, factory)
    except SocketAccessError as exc:
        return start_failed(f"vcrypto-engine-backend: --{exc.field.replace('_', '-')}: {exc.message}")
    except OSError as exc:
        return start_failed(f"vcrypto-engine-backend: cannot listen on {args.socket}: {exc}")
    if registry is not None:
        from ._metrics import BackendCollector

        registry.register(BackendCollector(backend.stats, backend.gauges))
    admin_path = admin.resolve_admin_socket(args.admin_socket, args.socket)
    admin_thread = None
    if admin_path:
        admin_thread = AdminThread(backend, admin_path, access=access)
        try:
            admin_thread.start()
        except OSError as exc:
            backend.close()
            return start_failed(f"vcrypto-engine-backend: cannot listen on --admin-socket {admin_path}: {exc}")
    faulthandler.register(signal.SIGUSR2)  # `kill -USR2 PID` dumps every thread's stack
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: backend.stop())
    # JsonLog.reopen is safe in a signal handler (dup2 onto the same fd)
    signal.signal(signal.SIGUSR1, lambda *_: reopen_logged([out]))
    out.info("listening", socket=args.socket)
    # a failed notification is never fatal: one event, named as the supervisor's
    def notify_failed(message: str) -> None:
        out.warning("sd_notify_failed", error=message)

    sdnotify.notify_or_warn("READY=1", f"STATUS=serving frontends on {args.socket}", warn=notify_failed)
    try:
        backend.run()
        sdnotify.notify_or_warn("STOPPING=1", warn=notify_failed)
    finally:
        if admin_thread is not None:
            admin_thread.close()
        backend.close()
    return 0



"""vcrypto-engine-backend: the daemon (``python -m vcrypto.engine.backend``).

One engine-backend per device: it serves every frontend (proxy worker) of a
tenant on a unix socket and drives one ``vcrypto-host`` device through
``vcrypto.driver`` (or, with ``--no-host``, computes in its own process).
How the loop works is in ``_loop`` (theory of operation); the shared-memory
layouts are in ``vcrypto.engine.contract``.
"""
from __future__ import annotations

import argparse
import faulthandler
import signal
import sys
from collections.abc import Callable

from vcrypto import admin
from vcrypto.driver import check_queue_size

from ..contract import Geometry
from ._admin import AdminThread
from ._device import CryptoDevice, LocalDevice
from ._loop import Backend, BackendConfig


# -- entry point ---------------------------------------------------------------------------

def _parse(argv):
    p = argparse.ArgumentParser(prog="vcrypto-engine-backend",
                                description="vcrypto engine backend: serves frontends, "
                                            "drives one vcrypto-host device")
    p.add_argument("--socket", required=True, help="unix socket frontends attach to")
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
    p.add_argument("--slots", type=int, default=256, help="request slots per frontend")
    p.add_argument("--queue-size", type=int, default=256,
                   help="entries of the data virtqueue to the host (requests in flight there)")
    p.add_argument("--stall-timeout-s", type=float, default=BackendConfig.stall_timeout_s,
                   help="a request outstanding at the host longer than this means the host is "
                        "hung: it is failed like a dead one (reconnect with backoff)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    try:
        check_queue_size(args.queue_size)
    except ValueError as exc:
        print(f"vcrypto-engine-backend: --queue-size: {exc}", file=sys.stderr)
        return 2
    if not args.stall_timeout_s > 0:
        print("vcrypto-engine-backend: --stall-timeout-s must be > 0", file=sys.stderr)
        return 2
    cfg = BackendConfig(socket_path=args.socket, host_socket=args.host_socket,
                        batch_max=args.batch_max, batch_deadline_us=args.batch_deadline_us,
                        stall_timeout_s=args.stall_timeout_s,
                        geometry=Geometry(ring_capacity=max(256, 1 << (args.slots - 1).bit_length()),
                                          slot_count=args.slots))
    if args.poll_budget_us is not None:
        cfg.poll_budget_us = args.poll_budget_us
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
    except OSError as exc:
        print(f"vcrypto-engine-backend: cannot listen on {args.socket}: {exc}", file=sys.stderr)
        return 2
    if args.metrics:
        from prometheus_client import CollectorRegistry, start_http_server

        from ._metrics import BackendCollector
        mhost, _, mport = args.metrics.rpartition(":")
        reg = CollectorRegistry()
        reg.register(BackendCollector(backend.stats, backend.gauges))
        httpd, _thread = start_http_server(int(mport), addr=mhost or "127.0.0.1", registry=reg)
        print(f"metrics on {mhost or '127.0.0.1'}:{httpd.server_port}", file=sys.stderr, flush=True)
    admin_path = admin.resolve_admin_socket(args.admin_socket, args.socket)
    admin_thread = None
    if admin_path:
        admin_thread = AdminThread(backend, admin_path)
        try:
            admin_thread.start()
        except OSError as exc:
            print(f"vcrypto-engine-backend: cannot listen on --admin-socket {admin_path}: {exc}",
                  file=sys.stderr)
            backend.close()
            return 2
    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 PID` dumps every thread's stack
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: backend.stop())
    print(f"vcrypto-engine-backend ready on {args.socket}", flush=True)
    try:
        backend.run()
    finally:
        if admin_thread is not None:
            admin_thread.close()
        backend.close()
    return 0


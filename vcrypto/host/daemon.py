"""``vcrypto-host``: the host daemon (``python -m vcrypto.host``).

    vcrypto-host --socket PATH [--config FILE] [--metrics HOST:PORT] 
                 [--admin-socket PATH|none] [--log TARGET] [--log-level LEVEL]

Listens on a unix socket; every accepted connection is one virtual crypto
device (one attached driver: an engine-backend, or QEMU). All devices share
one scheduler / resource pool. The socket file gets the config's
``socket_mode`` / ``socket_group`` (default 0660, the daemon's group) before
it listens. Ready when the socket accepts (and, with ``--metrics``, after
logging the ``metrics_listening`` event with the bound ``port``; port 0 picks
a free one); under systemd ``Type=notify`` it then sends ``READY=1``
(``vcrypto.sdnotify``). The metrics address is bound first: if it cannot be,
the daemon logs one ``start_failed`` line and exits with status 78
(``vcrypto.metrics_endpoint``: not restartable). SIGTERM/SIGINT:
``STOPPING=1``, stop accepting, close every device, release the pool, exit 0.
The admin socket (``vcrypto status``, protocol in ``vcrypto.admin``)
defaults to ``host.admin.sock`` next to the socket (``--admin-socket none``:
no admin socket). Logs are ``vcrypto._log`` JSON lines on ``--log`` (stderr, stdout or a file);
SIGUSR1 reopens a log file.
"""
from __future__ import annotations

import argparse
import errno
import functools
import itertools
import logging
import os
import signal
import socket
import struct
import sys
import time

import trio

from vcrypto import admin, sdnotify
from vcrypto._log import JsonLog, configure_daemon, event, reopen_logged
from vcrypto._unixsock import SocketAccessError, bind_unix_listener
from vcrypto.host.config import HostConfigError, HostConfig, load_config
from vcrypto.host.device import VirtioCryptoDevice
from vcrypto.host.keys import KeyStore, KeyStoreError
from vcrypto.host.queue import DeviceStats
from vcrypto.host.scheduling import open_scheduler
from vcrypto.metrics_endpoint import EXIT_METRICS_UNAVAILABLE, MetricsEndpointError, start_metrics_endpoint
from vcrypto.host.status import host_status

log = logging.getLogger("vcrypto.host")


class Host:
    """The set of devices, and what they share."""

    def __init__(self, config: HostConfig, scheduler, keys: KeyStore):
        self.config = config
        self.scheduler = scheduler
        self.keys = keys
        self.devices: dict[int, VirtioCryptoDevice] = {}
        self.closed_stats = DeviceStats()
        self._ids = itertools.count(1)
        self.socket_path = ""
        self.started_s = time.monotonic()

    async def admin_request(self, request: admin.AdminRequest) -> dict:
        """The admin socket's handler: the status document, built on this
        (the data path's) thread between two of its passes."""
        return host_status(self)

    async def serve_connection(self, sock) -> None:
        with sock:
            if len(self.devices) >= self.config.limits.max_devices:
                event(log, "warning", "device_refused", reason="max_devices", attached=len(self.devices))
                return
            device = VirtioCryptoDevice(next(self._ids), self.config, self.scheduler, self.keys)
            device.peer_pid = _peer_pid(sock)
            self.devices[device.id] = device
            event(log, "info", "device_attached", device=device.id)
            try:
                await device.serve(sock)
            except Exception:
                # Whatever went wrong belongs to this device alone.
                event(log, "error", "device_failed", exc_info=True, device=device.id)
            finally:
                del self.devices[device.id]
                self.closed_stats.add(device.stats)
                event(log, "info", "device_detached", device=device.id)

    async def serve(self, socket_path: str, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        # a stale socket left by a killed host is replaced; a live host's is never stolen
        access = self.config.socket
        listener = trio.socket.from_stdlib_socket(bind_unix_listener(socket_path, access=access))
        self.socket_path = socket_path
        event(log, "info", "listening", socket=socket_path, access=access.describe())
        try:
            async with trio.open_nursery() as nursery:
                task_status.started()
                while True:
                    try:
                        conn, _ = await listener.accept()
                    except OSError as exc:
                        if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                            event(log, "warning", "accept_failed", error=str(exc), backoff_s=0.1)
                            await trio.sleep(0.1)
                            continue
                        raise
                    nursery.start_soon(self.serve_connection, conn)
        finally:
            listener.close()
            try:
                os.unlink(socket_path)
            except OSError:
                pass


def _peer_pid(sock) -> int:
    """The connected driver's pid (0 if the kernel does not say)."""
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return 0
    return struct.unpack("3i", creds)[0]


def _start_metrics(spec: str):
    """The metrics endpoint, bound before anything else (``vcrypto.metrics_endpoint``);
    the host's collector is registered once the host exists."""
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    addr, bound = start_metrics_endpoint(spec, registry)
    event(log, "info", "metrics_listening", address=addr, port=bound)
    return registry


async def run(config: HostConfig, socket_path: str, metrics_registry, out: JsonLog,
              admin_socket: str | None = None) -> None:
    keys = KeyStore.load_dir(config.keys_dir)
    async with open_scheduler(config.pool) as scheduler:
        host = Host(config, scheduler, keys)
        if metrics_registry is not None:
            from vcrypto.host.metrics import HostCollector

            metrics_registry.register(HostCollector(host))
        async with trio.open_nursery() as nursery:
            await nursery.start(host.serve, socket_path)
            if admin_socket:
                await nursery.start(functools.partial(admin.serve_admin, access=config.socket),
                                    admin_socket, host.admin_request)
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGUSR1) as signals:
                # READY only once a SIGTERM (systemctl stop) right after it is caught
                sdnotify.notify_or_warn("READY=1", f"STATUS=serving on {socket_path}", warn=_notify_failed)
                async for signum in signals:
                    if signum == signal.SIGUSR1:
                        reopen_logged([out])
                        continue
                    event(log, "info", "stopping", signal=signal.Signals(signum).name)
                    sdnotify.notify_or_warn("STOPPING=1", warn=_notify_failed)
                    nursery.cancel_scope.cancel()
                    break


def _notify_failed(message: str) -> None:
    """sd_notify failed (never fatal): one event, named as the supervisor's."""
    event(log, "warning", "sd_notify_failed", error=message)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="vcrypto-host", description="vhost-user backend serving virtual crypto devices",
        epilog="Who may connect: the config's socket_mode (octal, default 0660) and socket_group "
               "(default: the daemon's group) are set on the socket before it listens. Under "
               "systemd Type=notify, READY=1 is sent to $NOTIFY_SOCKET once the socket listens.")
    parser.add_argument("--socket", required=True, help="unix socket path to listen on")
    parser.add_argument("--config", help="YAML config file")
    parser.add_argument("--metrics", help="HOST:PORT for the prometheus endpoint (port 0 = any)")
    parser.add_argument("--admin-socket",
                        help="unix socket of the admin endpoint (vcrypto status; default: "
                             "host.admin.sock next to --socket; 'none': no admin socket)")
    parser.add_argument("--log", default="stderr", help="JSON log: stderr, stdout or a file path")
    parser.add_argument("--log-level", default="info", type=str.lower,
                        choices=["debug", "info", "warning", "error"])
    args = parser.parse_args(argv)
    try:
        out = configure_daemon(args.log, args.log_level)
    except OSError as exc:
        print(f"vcrypto-host: --log {args.log}: {exc}", file=sys.stderr)
        return 2

    admin_socket = admin.resolve_admin_socket(args.admin_socket, args.socket)

    def start_failed(message: str) -> int:
        out.error("start_failed", error=message)
        return 2

    try:
        config = load_config(args.config)
    except HostConfigError as exc:
        where = f"{args.config}: " if args.config and not str(exc).startswith(args.config) else ""
        return start_failed(f"vcrypto-host: config error: {where}{exc}")
    registry = None
    if args.metrics:
        try:
            registry = _start_metrics(args.metrics)
        except MetricsEndpointError as exc:  # a restart cannot fix it: say so once, no traceback
            out.error("start_failed", error=f"vcrypto-host: {exc}")
            return EXIT_METRICS_UNAVAILABLE
    try:
        # fail fast, before resources start, if another host serves the path
        # or the socket cannot be given its mode and group
        bind_unix_listener(args.socket, access=config.socket).close()
    except SocketAccessError as exc:
        where = f"{args.config}: " if args.config else ""
        return start_failed(f"vcrypto-host: config error: {where}{exc.field}: {exc.message}")
    except OSError as exc:   # SocketInUse, or a path we may not use
        return start_failed(f"vcrypto-host: cannot listen on {args.socket}: {exc}")
    if admin_socket:
        try:
            bind_unix_listener(admin_socket).close()
        except OSError as exc:
            return start_failed(f"vcrypto-host: cannot listen on --admin-socket {admin_socket}: {exc}")
    try:
        trio.run(run, config, args.socket, registry, out, admin_socket)
    except KeyStoreError as exc:
        return start_failed(f"vcrypto-host: keys: {exc}")
    except ValueError as exc:   # the pool's config errors (PoolConfigError) name their path
        return start_failed(f"vcrypto-host: config error: {exc}")
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())

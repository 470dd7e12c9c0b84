"""``vcrypto-host``: the host daemon (``python -m vcrypto.host``).

    vcrypto-host --socket PATH [--config FILE] [--metrics HOST:PORT]
                 [--admin-socket PATH|none] [--log-level LEVEL]

Listens on a unix socket; every accepted connection is one virtual crypto
device (one attached driver: an engine-backend, or QEMU). All devices share
one scheduler / resource pool. Ready when the socket accepts (and, with
``--metrics``, after logging ``metrics listening on HOST:PORT`` with the bound
port; port 0 picks a free one). The admin socket (``vcrypto status``,
protocol in ``vcrypto.admin``) defaults to ``host.admin.sock`` next to the
socket (``--admin-socket none``: no admin socket). SIGTERM/SIGINT: stop accepting, close every
device, release the pool, exit 0.
"""
from __future__ import annotations

import argparse
import errno
import itertools
import logging
import os
import signal
import socket
import struct
import sys
import time

import trio

from vcrypto import admin
from vcrypto._unixsock import bind_unix_listener
from vcrypto.host.config import HostConfigError, HostConfig, load_config
from vcrypto.host.device import VirtioCryptoDevice
from vcrypto.host.keys import KeyStore, KeyStoreError
from vcrypto.host.queue import DeviceStats
from vcrypto.host.scheduling import open_scheduler
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
                log.warning("refusing a device: %d attached (max_devices)", len(self.devices))
                return
            device = VirtioCryptoDevice(next(self._ids), self.config, self.scheduler, self.keys)
            device.peer_pid = _peer_pid(sock)
            self.devices[device.id] = device
            log.info("device %d attached", device.id)
            try:
                await device.serve(sock)
            except Exception:
                # Whatever went wrong belongs to this device alone.
                log.exception("device %d failed", device.id)
            finally:
                del self.devices[device.id]
                self.closed_stats.add(device.stats)
                log.info("device %d detached", device.id)

    async def serve(self, socket_path: str, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        # a stale socket left by a killed host is replaced; a live host's is never stolen
        listener = trio.socket.from_stdlib_socket(bind_unix_listener(socket_path))
        self.socket_path = socket_path
        log.info("listening on %s", socket_path)
        try:
            async with trio.open_nursery() as nursery:
                task_status.started()
                while True:
                    try:
                        conn, _ = await listener.accept()
                    except OSError as exc:
                        if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                            log.warning("accept: %s; backing off", exc)
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


def _start_metrics(host: Host, spec: str) -> None:
    from prometheus_client import CollectorRegistry, start_http_server

    from vcrypto.host.metrics import HostCollector

    addr, _, port = spec.rpartition(":")
    addr = addr.strip("[]") or "127.0.0.1"
    registry = CollectorRegistry()
    registry.register(HostCollector(host))
    server, _thread = start_http_server(int(port), addr=addr, registry=registry)
    bound = server.server_address[1]
    log.info("metrics listening on %s:%d", addr, bound)
    print(f"metrics listening on {addr}:{bound}", file=sys.stderr, flush=True)


async def run(config: HostConfig, socket_path: str, metrics: str | None,
              admin_socket: str | None = None) -> None:
    keys = KeyStore.load_dir(config.keys_dir)
    async with open_scheduler(config.pool) as scheduler:
        host = Host(config, scheduler, keys)
        if metrics:
            _start_metrics(host, metrics)
        async with trio.open_nursery() as nursery:
            await nursery.start(host.serve, socket_path)
            if admin_socket:
                await nursery.start(admin.serve_admin, admin_socket, host.admin_request)
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for signum in signals:
                    log.info("signal %d: shutting down", signum)
                    nursery.cancel_scope.cancel()
                    break


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="vcrypto-host", description="vhost-user backend serving virtual crypto devices")
    parser.add_argument("--socket", required=True, help="unix socket path to listen on")
    parser.add_argument("--config", help="YAML config file")
    parser.add_argument("--metrics", help="HOST:PORT for the prometheus endpoint (port 0 = any)")
    parser.add_argument("--admin-socket",
                        help="unix socket of the admin endpoint (vcrypto status; default: "
                             "host.admin.sock next to --socket; 'none': no admin socket)")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    admin_socket = admin.resolve_admin_socket(args.admin_socket, args.socket)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        config = load_config(args.config)
    except HostConfigError as exc:
        print(f"vcrypto-host: config error: {exc}", file=sys.stderr)
        return 2
    try:
        # fail fast, before resources start, if another host serves the path
        bind_unix_listener(args.socket).close()
    except OSError as exc:   # SocketInUse, or a path we may not use
        print(f"vcrypto-host: cannot listen on {args.socket}: {exc}", file=sys.stderr)
        return 2
    if admin_socket:
        try:
            bind_unix_listener(admin_socket).close()
        except OSError as exc:
            print(f"vcrypto-host: cannot listen on --admin-socket {admin_socket}: {exc}",
                  file=sys.stderr)
            return 2
    try:
        trio.run(run, config, args.socket, args.metrics, admin_socket)
    except KeyStoreError as exc:
        print(f"vcrypto-host: keys: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:   # the pool's config errors (PoolConfigError) name their path
        print(f"vcrypto-host: config error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())

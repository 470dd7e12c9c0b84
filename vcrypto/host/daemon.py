"""``vcrypto-host``: the host daemon (``python -m vcrypto.host``).

    vcrypto-host --socket PATH [--config FILE] [--metrics HOST:PORT] [--log-level LEVEL]

Listens on a unix socket; every accepted connection is one virtual crypto
device (one attached driver: an engine-backend, or QEMU). All devices share
one scheduler / resource pool. The socket file gets the config's
``socket_mode`` / ``socket_group`` (default 0660, the daemon's group) before
it listens. Ready when the socket accepts (and, with ``--metrics``, after
logging ``metrics listening on HOST:PORT`` with the bound port; port 0 picks
a free one); under systemd ``Type=notify`` it then sends ``READY=1``
(``vcrypto.sdnotify``). The metrics address is bound first: if it cannot be,
the daemon prints one line and exits with status 78
(``vcrypto.metrics_endpoint``: not restartable). SIGTERM/SIGINT:
``STOPPING=1``, stop accepting, close every device, release the pool, exit 0.
"""
from __future__ import annotations

import argparse
import errno
import itertools
import logging
import os
import signal
import sys

import trio

from vcrypto import sdnotify
from vcrypto._unixsock import SocketAccessError, bind_unix_listener
from vcrypto.host.config import HostConfigError, HostConfig, load_config
from vcrypto.host.device import VirtioCryptoDevice
from vcrypto.host.keys import KeyStore, KeyStoreError
from vcrypto.host.queue import DeviceStats
from vcrypto.host.scheduling import open_scheduler
from vcrypto.metrics_endpoint import EXIT_METRICS_UNAVAILABLE, MetricsEndpointError, start_metrics_endpoint

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

    async def serve_connection(self, sock) -> None:
        with sock:
            if len(self.devices) >= self.config.limits.max_devices:
                log.warning("refusing a device: %d attached (max_devices)", len(self.devices))
                return
            device = VirtioCryptoDevice(next(self._ids), self.config, self.scheduler, self.keys)
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
        access = self.config.socket
        listener = trio.socket.from_stdlib_socket(bind_unix_listener(socket_path, access=access))
        log.info("listening on %s (%s)", socket_path, access.describe())
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


def _start_metrics(spec: str):
    """The metrics endpoint, bound before anything else (``vcrypto.metrics_endpoint``);
    the host's collector is registered once the host exists."""
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    addr, bound = start_metrics_endpoint(spec, registry)
    log.info("metrics listening on %s:%d", addr, bound)
    print(f"metrics listening on {addr}:{bound}", file=sys.stderr, flush=True)
    return registry


async def run(config: HostConfig, socket_path: str, metrics_registry=None) -> None:
    keys = KeyStore.load_dir(config.keys_dir)
    async with open_scheduler(config.pool) as scheduler:
        host = Host(config, scheduler, keys)
        if metrics_registry is not None:
            from vcrypto.host.metrics import HostCollector

            metrics_registry.register(HostCollector(host))
        async with trio.open_nursery() as nursery:
            await nursery.start(host.serve, socket_path)
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                # READY only once a SIGTERM (systemctl stop) right after it is caught
                sdnotify.notify_or_warn("READY=1", f"STATUS=serving on {socket_path}", warn=log.warning)
                async for signum in signals:
                    log.info("signal %d: shutting down", signum)
                    sdnotify.notify_or_warn("STOPPING=1", warn=log.warning)
                    nursery.cancel_scope.cancel()
                    break


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="vcrypto-host", description="vhost-user backend serving virtual crypto devices",
        epilog="Who may connect: the config's socket_mode (octal, default 0660) and socket_group "
               "(default: the daemon's group) are set on the socket before it listens. Under "
               "systemd Type=notify, READY=1 is sent to $NOTIFY_SOCKET once the socket listens.")
    parser.add_argument("--socket", required=True, help="unix socket path to listen on")
    parser.add_argument("--config", help="YAML config file")
    parser.add_argument("--metrics", help="HOST:PORT for the prometheus endpoint (port 0 = any)")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        config = load_config(args.config)
    except HostConfigError as exc:
        where = f"{args.config}: " if args.config and not str(exc).startswith(args.config) else ""
        print(f"vcrypto-host: config error: {where}{exc}", file=sys.stderr)
        return 2
    registry = None
    if args.metrics:
        try:
            registry = _start_metrics(args.metrics)
        except MetricsEndpointError as exc:  # a restart cannot fix it: say so once, no traceback
            print(f"vcrypto-host: {exc}", file=sys.stderr, flush=True)
            return EXIT_METRICS_UNAVAILABLE
    try:
        # fail fast, before resources start, if another host serves the path
        # or the socket cannot be given its mode and group
        bind_unix_listener(args.socket, access=config.socket).close()
    except SocketAccessError as exc:
        where = f"{args.config}: " if args.config else ""
        print(f"vcrypto-host: config error: {where}{exc.field}: {exc.message}", file=sys.stderr)
        return 2
    except OSError as exc:   # SocketInUse, or a path we may not use
        print(f"vcrypto-host: cannot listen on {args.socket}: {exc}", file=sys.stderr)
        return 2
    try:
        trio.run(run, config, args.socket, registry)
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

"""One worker process: listeners on SO_REUSEPORT sockets, connections, signals.

The supervisor starts N of these (``python -m vcproxy worker ...``); each
binds its own socket to every listener's port with SO_REUSEPORT, so the
kernel spreads new connections over the workers and a dying worker takes
only its own connections with it.

Per connection: count bytes on the raw socket, then the TLS seam
(``TLSStream`` over that stream, or nothing for ``tls.enabled: false``), then
the mode's core (``HttpProxyConnection`` or ``serve_tcp``), which only ever
sees a ``trio.abc.Stream``.

Signals: SIGTERM/SIGINT drain (stop accepting, close idle keep-alive
connections, let in-flight requests finish, cancel what is left at
``limits.drain_timeout_s``); SIGHUP reloads the config file and
certificates: new connections get the new runtime, open ones keep the one
they started with.
"""
from __future__ import annotations

import os
import signal
import socket as stdsocket
import time
import traceback
from dataclasses import dataclass
from typing import Any

import trio

from vcproxy import _log
from vcproxy.config import Config, ConfigError, load_config
from vcproxy.metrics import metrics
from vcproxy.tls import ServerConfig, TLSError, TLSStream
from ._http import ConnState, HttpProxyConnection, HttpRuntime, _close
from ._router import Router
from ._tcp import serve_tcp
from ._tlsglue import ProviderUnavailable, build_server_config, make_provider, read_ticket_keys
from ._upstream import UpstreamPool

LISTEN_BACKLOG = 1024


class CountingStream(trio.abc.Stream):
    """Counts the bytes that cross the client socket (TLS records included)."""

    def __init__(self, inner: trio.SocketStream, counter_in: Any, counter_out: Any) -> None:
        self.inner = inner
        self._in = counter_in
        self._out = counter_out

    async def send_all(self, data) -> None:
        await self.inner.send_all(data)
        self._out.inc(len(data))

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes=None) -> bytes:
        data = await self.inner.receive_some(max_bytes)
        if data:
            self._in.inc(len(data))
        return data

    async def send_eof(self) -> None:
        await self.inner.send_eof()

    async def aclose(self) -> None:
        await self.inner.aclose()


class TLSErrorsAsBroken(trio.abc.Stream):
    """A TLS failure after the handshake (bad record, alert) is, to the proxy cores,
    just a broken transport: re-raise it as ``trio.BrokenResourceError`` (as
    ``trio.SSLStream`` does) so the HTTP/TCP cores never import the TLS stack."""

    def __init__(self, tls: TLSStream) -> None:
        self.tls = tls

    async def send_all(self, data) -> None:
        try:
            await self.tls.send_all(data)
        except TLSError as exc:
            raise trio.BrokenResourceError(f"TLS: {exc}") from exc

    async def wait_send_all_might_not_block(self) -> None:
        await self.tls.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes=None) -> bytes:
        try:
            return await self.tls.receive_some(max_bytes)
        except TLSError as exc:
            raise trio.BrokenResourceError(f"TLS: {exc}") from exc

    async def aclose(self) -> None:
        try:
            await self.tls.aclose()
        except TLSError:
            pass


@dataclass(frozen=True, eq=False)
class ListenerRuntime:
    """One listener's view of one config generation."""

    name: str
    mode: str
    tls: ServerConfig | None
    http: HttpRuntime | None
    tcp_pool: UpstreamPool | None
    config: Config


class WorkerObserver:
    def __init__(self) -> None:
        self.m = metrics()

    def request_done(self, record: dict[str, Any], seconds: float) -> None:
        listener = record.get("listener", "")
        self.m.http_requests_total.labels(listener, str(record.get("status", 0))).inc()
        self.m.http_request_seconds.labels(listener).observe(seconds)
        _log.access_log.write(record | {"ts": round(time.time(), 6)})

    def tcp_done(self, record: dict[str, Any]) -> None:
        self.m.tcp_sessions_total.labels(record["listener"], record["result"]).inc()
        _log.access_log.write(record | {"ts": round(time.time(), 6)})

    def upstream_error(self, upstream: str, kind: str) -> None:
        self.m.upstream_errors_total.labels(upstream, kind).inc()


def bind_reuseport(address: str, port: int) -> trio.socket.SocketType:
    family = stdsocket.AF_INET6 if ":" in address else stdsocket.AF_INET
    sock = trio.socket.socket(family, stdsocket.SOCK_STREAM)
    sock.setsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_REUSEADDR, 1)
    sock.setsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_REUSEPORT, 1)
    return sock


class Worker:
    def __init__(self, config_path: str, index: int, ports: dict[int, int], ready_fd: int | None,
                 backend_socket: str | None = None, overrides: list[str] | None = None,
                 ticket_keys_file: str | None = None) -> None:
        self.config_path = config_path
        self.ticket_keys_file = ticket_keys_file
        self.overrides = list(overrides or ())
        self.index = index
        self.ports = ports
        self.ready_fd = ready_fd
        self.backend_socket = backend_socket
        self.draining = trio.Event()
        self.conns: set[ConnState] = set()
        self.observer: WorkerObserver | None = None
        self.runtimes: list[ListenerRuntime] = []
        self.pools: dict[str, UpstreamPool] = {}

    # ------------------------------------------------------------ config generations

    def _build(self, config: Config, old_pools: dict[str, UpstreamPool]) -> tuple[list[ListenerRuntime], dict[str, UpstreamPool]]:
        """Runtimes for ``config``; reuses pools whose upstream config is unchanged."""
        pools = {}
        for name, up in config.upstreams.items():
            old = old_pools.get(name)
            pools[name] = old if old is not None and old.config == up else UpstreamPool(name, up)
        router = Router(config.routes)
        ticket_keys = read_ticket_keys(self.ticket_keys_file)
        runtimes = []
        for i, lis in enumerate(config.listeners):
            name = config.listener_name(i)
            tls = build_server_config(lis, config, ticket_keys) if lis.tls.enabled else None
            scheme = "https" if tls is not None else "http"
            http = HttpRuntime(config, name, scheme, router, pools) if lis.mode == "http" else None
            tcp_pool = pools[lis.upstream] if lis.mode == "tcp" and lis.upstream else None
            runtimes.append(ListenerRuntime(name, lis.mode, tls, http, tcp_pool, config))
        return runtimes, pools

    async def run(self) -> int:
        try:
            config = load_config(self.config_path, self.overrides)
        except ConfigError as exc:
            _log.error_log.error("config_invalid", worker=self.index, problems=exc.problems)
            return 2
        _log.configure(config.logging.access_log, config.logging.error_log, config.logging.level)
        m = metrics()
        self.observer = WorkerObserver()
        try:
            self.provider = await make_provider(
                config, lambda op, prov: m.crypto_ops_total.labels(op, prov).inc(),
                lambda op, reason: m.crypto_fallbacks_total.labels(op, reason).inc(),
                self.backend_socket)
            self.runtimes, self.pools = self._build(config, {})
        except (ProviderUnavailable, OSError, ValueError) as exc:
            _log.error_log.error("worker_start_failed", worker=self.index, error=str(exc))
            return 2
        self.config = config
        self.limit = trio.Semaphore(config.limits.max_connections)
        sockets = []
        for i, lis in enumerate(config.listeners):
            sock = bind_reuseport(lis.address, self.ports.get(i, lis.port))
            await sock.bind((lis.address, self.ports.get(i, lis.port)))
            sock.listen(LISTEN_BACKLOG)
            sockets.append(sock)
        async with trio.open_nursery() as conn_nursery:
            self.conn_nursery = conn_nursery
            async with trio.open_nursery() as service:
                self.service = service
                self.accept_scope = trio.CancelScope()
                service.start_soon(self._signals)
                for pool in self.pools.values():
                    service.start_soon(pool.run_health_checks)
                frontend = _frontend_of(self.provider)
                if frontend is not None:
                    service.start_soon(_export_frontend_fallbacks, frontend)
                service.start_soon(self._accept_all, sockets)
                if self.ready_fd is not None:
                    os.write(self.ready_fd, b"R")
                    os.close(self.ready_fd)
                _log.error_log.info("worker_ready", worker=self.index,
                                    listeners=[s.getsockname()[:2] for s in sockets])
        _log.error_log.info("worker_exit", worker=self.index)
        return 0

    async def _accept_all(self, sockets: list) -> None:
        with self.accept_scope:
            async with trio.open_nursery() as nursery:
                for i, sock in enumerate(sockets):
                    nursery.start_soon(self._accept_loop, i, sock)
        for sock in sockets:
            sock.close()

    async def _accept_loop(self, index: int, sock) -> None:
        while True:
            await self.limit.acquire()
            try:
                client, addr = await sock.accept()
            except BaseException:
                self.limit.release()
                raise
            self.conn_nursery.start_soon(self._connection, index, client, addr)

    # ------------------------------------------------------------ one connection

    async def _connection(self, index: int, sock, addr) -> None:
        rt = self.runtimes[index]
        m = metrics()
        m.connections_total.labels(rt.name).inc()
        active = m.connections_active.labels(rt.name)
        active.inc()
        conn = ConnState(addr[0], addr[1], self.draining)
        self.conns.add(conn)
        stream: trio.abc.Stream = CountingStream(
            trio.SocketStream(sock), m.bytes_received_total.labels(rt.name), m.bytes_sent_total.labels(rt.name))
        try:
            if rt.tls is not None:
                stream = await self._handshake(stream, rt)
                if stream is None:
                    return
            if rt.mode == "http":
                await HttpProxyConnection(stream, conn, rt.http, self.observer).serve()
            else:
                await serve_tcp(stream, conn, rt.tcp_pool, rt.config.limits.idle_timeout_s, rt.name, self.observer)
        except Exception as exc:  # noqa: BLE001 - one connection's bug must not take the worker down
            _log.error_log.error("connection_failed", listener=rt.name, client=addr[0],
                                 error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
        finally:
            if stream is not None:
                await _close(stream)
            self.conns.discard(conn)
            active.dec()
            self.limit.release()

    async def _handshake(self, raw: trio.abc.Stream, rt: ListenerRuntime) -> trio.abc.Stream | None:
        m = metrics()
        tls = TLSStream(raw, rt.tls, self.provider)
        started = time.monotonic()
        result = "ok"
        try:
            with trio.fail_after(rt.config.limits.handshake_timeout_s):
                await tls.do_handshake()
        except trio.TooSlowError:
            result = "timeout"
        except TLSError as exc:
            result = "timeout" if type(exc).__name__ == "HandshakeTimeout" else "error"
            _log.error_log.debug("handshake_failed", listener=rt.name, error=f"{type(exc).__name__}: {exc}")
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            result = "error"
            _log.error_log.debug("handshake_failed", listener=rt.name, error=f"{type(exc).__name__}: {exc}")
        if result != "ok":
            m.tls_handshakes_total.labels(rt.name, result, "", "", "").inc()
            await _close(raw)
            return None
        m.tls_handshake_seconds.labels(rt.name).observe(time.monotonic() - started)
        m.tls_handshakes_total.labels(rt.name, "ok", tls.version or "", tls.cipher_suite or "",
                                      "true" if tls.resumed else "false").inc()
        return TLSErrorsAsBroken(tls)

    # ------------------------------------------------------------ signals

    async def _signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async for signum in signals:
                if signum == signal.SIGHUP:
                    self._reload()
                elif not self.draining.is_set():
                    self.service.start_soon(self._drain)

    async def _drain(self) -> None:
        deadline_s = self.config.limits.drain_timeout_s
        _log.error_log.info("worker_draining", worker=self.index, open_connections=len(self.conns),
                            deadline_s=deadline_s)
        self.draining.set()
        self.accept_scope.cancel()
        for conn in list(self.conns):
            if conn.idle_scope is not None and conn.requests > 0:
                conn.idle_scope.cancel()
        with trio.move_on_after(deadline_s):
            while self.conns:
                await trio.sleep(0.02)
        if self.conns:
            _log.error_log.warning("drain_deadline", worker=self.index, cancelled_connections=len(self.conns))
        self.conn_nursery.cancel_scope.cancel()
        self.service.cancel_scope.cancel()
        for pool in self.pools.values():
            await pool.aclose()

    def _reload(self) -> None:
        m = metrics()
        try:
            config = load_config(self.config_path, self.overrides)
            problems = _incompatible(self.config, config)
            if problems:
                raise ConfigError(problems)
            runtimes, pools = self._build(config, self.pools)
        except (ConfigError, OSError, ValueError) as exc:
            m.config_reloads_total.labels("error").inc()
            _log.error_log.error("reload_failed", worker=self.index, error=str(exc))
            return
        old = self.pools
        self.config, self.runtimes, self.pools = config, runtimes, pools
        for name, pool in old.items():
            if pools.get(name) is not pool:
                self.service.start_soon(pool.aclose)
        for name, pool in pools.items():
            if old.get(name) is not pool:
                self.service.start_soon(pool.run_health_checks)
        m.config_reloads_total.labels("ok").inc()
        _log.error_log.info("reloaded", worker=self.index)


def _frontend_of(provider: Any) -> Any:
    """The vcrypto engine frontend under the provider wrappers, if any."""
    for _ in range(4):
        frontend = getattr(provider, "frontend", None)
        if frontend is not None:
            return frontend
        provider = getattr(provider, "inner", None) or getattr(provider, "primary", None)
        if provider is None:
            return None
    return None


async def _export_frontend_fallbacks(frontend: Any, interval_s: float = 1.0) -> None:
    """Requests the engine frontend ran in-process (engine away) -> crypto_fallbacks_total.

    The frontend keeps plain counters in this process; multiprocess metrics
    need them copied into a Counter, so we add the delta once a second.
    """
    counter = metrics().crypto_fallbacks_total.labels("any", "engine_unavailable")
    seen = 0
    while True:
        now = frontend.stats.fallback_requests
        if now > seen:
            counter.inc(now - seen)
            seen = now
        await trio.sleep(interval_s)


def _incompatible(old: Config, new: Config) -> list[tuple[str, str]]:
    """What a reload cannot change without a restart (sockets, provider, workers)."""
    out = []
    if len(old.listeners) != len(new.listeners):
        out.append(("listeners", "the number of listeners changed: restart to apply"))
    for i, (a, b) in enumerate(zip(old.listeners, new.listeners)):
        if (a.address, a.port, a.mode, a.tls.enabled) != (b.address, b.port, b.mode, b.tls.enabled):
            out.append((f"listeners[{i}]", "address, port, mode or tls.enabled changed: restart to apply"))
    if old.crypto != new.crypto:
        out.append(("crypto", "changed: restart to apply"))
    return out


def worker_main(config_path: str, index: int, ports: dict[int, int], ready_fd: int | None,
                backend_socket: str | None = None, overrides: list[str] | None = None,
                ticket_keys_file: str | None = None) -> int:
    # A terminal's Ctrl-C reaches every process of the group: a worker drains on
    # SIGINT like on SIGTERM (handled in Worker._signals), it does not die.
    return trio.run(Worker(config_path, index, ports, ready_fd, backend_socket, overrides, ticket_keys_file).run)

"""One worker process: config generations, listeners, signals.

The supervisor starts N of these (``python -m vcproxy worker ...``); each
binds its own socket to every listener's port with SO_REUSEPORT, so the
kernel spreads new connections over the workers and a dying worker takes
only its own connections with it. Accepting and serving connections is
``_listener``'s job; this module owns what changes over the process's life:
the config generation (``ListenerRuntime`` per listener, upstream pools),
the crypto provider, and the signals.

Signals: SIGTERM/SIGINT drain (stop accepting, close idle keep-alive
connections, let in-flight requests finish, cancel what is left at
``limits.drain_timeout_s``); SIGHUP reloads the config file and
certificates: new connections get the new runtime, open ones keep the one
they started with. SIGUSR1 reopens the log files (logrotate; the supervisor
forwards it).
"""
from __future__ import annotations

import os
import resource
import signal
from typing import Any

import trio

from vcproxy import _log
from vcproxy.config import Config, ConfigError, load_config
from vcproxy.metrics import metrics
from . import _malloc
from ._counts import PENDING
from ._forwarding import Forwarding
from ._http import HttpRuntime
from ._listener import ConnectionServer, ListenerRuntime, open_listener
from ._router import Router
from ._tlsglue import ProviderUnavailable, build_server_config, make_provider, read_ticket_keys
from ._upstream import UpstreamPool


class _Children:
    """A labelled metric's children by label values, looked up once each:
    ``labels()`` takes a lock and builds a key on every call."""

    def __init__(self, metric: Any) -> None:
        self._metric = metric
        self._children: dict[tuple[str, ...], Any] = {}

    def __call__(self, *values: str) -> Any:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._metric.labels(*values)
        return child


class WorkerObserver:
    def __init__(self) -> None:
        self.m = metrics()
        self._requests = _Children(self.m.http_requests_total)
        self._request_seconds = _Children(self.m.http_request_seconds)
        self._upstream_seconds = _Children(self.m.upstream_response_seconds)

    def request_done(self, record: dict[str, Any], seconds: float) -> None:
        listener = record.get("listener", "")
        # batched (_counts: on /metrics within FLUSH_INTERVAL_S); the count last
        PENDING.observe(self._request_seconds(listener), seconds)
        PENDING.inc_final(self._requests(listener, str(record.get("status", 0)), record.get("http_version", "")))
        upstream_s = record.get("upstream_response_s")
        if upstream_s is not None:
            PENDING.observe(self._upstream_seconds(record["upstream"]), upstream_s)
        if _log.access_log.enabled():
            _log.access_log.write(record | {"ts": _log.iso_ts()})

    def tcp_done(self, record: dict[str, Any]) -> None:
        self.m.tcp_sessions_total.labels(record["listener"], record["result"]).inc()
        _log.access_log.write(record | {"ts": _log.iso_ts()})

    def upstream_error(self, upstream: str, kind: str) -> None:
        self.m.upstream_errors_total.labels(upstream, kind).inc()

    def upstream_health(self, upstream: str, server: str, up: bool, reason: str) -> None:
        """A pool's server changed state (``UpstreamPool``'s ``on_health``)."""
        self.m.upstream_health_transitions_total.labels(upstream, server, "up" if up else "down").inc()
        self.m.upstream_up.labels(upstream, server).set(1 if up else 0)
        _log.error_log.event("info" if up else "warning", "upstream_up" if up else "upstream_down",
                             upstream=upstream, server=server, reason=reason)

    def upstream_pool(self, pool: UpstreamPool) -> None:
        """A new pool: its servers' state as it starts (healthy)."""
        for server, healthy in pool.servers():
            self.m.upstream_up.labels(pool.name, server).set(1 if healthy else 0)


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
        self.runtimes: list[ListenerRuntime] = []
        self.pools: dict[str, UpstreamPool] = {}

    # ------------------------------------------------------------ config generations

    def _build(self, config: Config, old_pools: dict[str, UpstreamPool]) -> tuple[list[ListenerRuntime], dict[str, UpstreamPool]]:
        """Runtimes for ``config``; reuses pools whose upstream config is unchanged."""
        pools = {}
        for name, up in config.upstreams.items():
            old = old_pools.get(name)
            if old is not None and old.config == up:
                pools[name] = old
            else:
                pools[name] = UpstreamPool(name, up, self.observer.upstream_health)
                self.observer.upstream_pool(pools[name])
        router = Router(config.routes)
        ticket_keys = read_ticket_keys(self.ticket_keys_file)
        runtimes = []
        for i, lis in enumerate(config.listeners):
            name = config.listener_name(i)
            tls = build_server_config(lis, config, ticket_keys) if lis.tls.enabled else None
            scheme = "https" if tls is not None else "http"
            forwarding = Forwarding(scheme, lis.trusted_proxies, lis.forwarded, lis.via, lis.echo_request_id)
            http = HttpRuntime(config, name, scheme, router, pools, forwarding) if lis.mode == "http" else None
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
            ops = _Children(m.crypto_ops_total)

            def count_op(op: str, prov: str, n: int = 1) -> None:
                # records' AEAD ops are batched (_counts); a handshake's ECDH and signature are not
                if op.startswith("aead"):
                    PENDING.inc(ops(op, prov), n)
                else:
                    ops(op, prov).inc(n)

            self.provider = await make_provider(
                config, count_op,
                lambda op, reason: m.crypto_fallbacks_total.labels(op, reason).inc(),
                self.backend_socket, _keyless_failed)
            self.runtimes, self.pools = self._build(config, {})
        except (ProviderUnavailable, OSError, ValueError) as exc:
            _log.error_log.error("worker_start_failed", worker=self.index, error=str(exc))
            return 2
        self.config = config
        self.server = ConnectionServer(lambda: self.runtimes, self.provider, self.observer,
                                       _fit_open_files(config.limits.max_connections, self.index), self.draining)
        sockets = [await open_listener(lis.address, self.ports.get(i, lis.port))
                   for i, lis in enumerate(config.listeners)]
        async with trio.open_nursery() as conn_nursery:
            self.conn_nursery = conn_nursery
            async with trio.open_nursery() as service:
                self.service = service
                service.start_soon(self._signals)
                service.start_soon(PENDING.run)
                for pool in self.pools.values():
                    service.start_soon(pool.run_health_checks)
                frontend = _under_wrappers(self.provider, "frontend")
                if frontend is not None:
                    frontend.on_inline = _count_inline
                    service.start_soon(_export_frontend_fallbacks, frontend)
                key_shares = _under_wrappers(self.provider, "key_shares")
                if key_shares is not None:
                    service.start_soon(_export_key_shares, key_shares)
                service.start_soon(self.server.serve, sockets, conn_nursery)
                if self.ready_fd is not None:
                    os.write(self.ready_fd, b"R")
                    os.close(self.ready_fd)
                _log.error_log.info("worker_ready", worker=self.index,
                                    listeners=[s.getsockname()[:2] for s in sockets])
        PENDING.flush()
        _log.error_log.info("worker_exit", worker=self.index)
        return 0

    # ------------------------------------------------------------ signals

    async def _signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1) as signals:
            async for signum in signals:
                if signum == signal.SIGHUP:
                    self._reload()
                elif signum == signal.SIGUSR1:
                    _log.reopen_logs(worker=self.index)
                elif not self.draining.is_set():
                    self.service.start_soon(self._drain)

    async def _drain(self) -> None:
        deadline_s = self.config.limits.drain_timeout_s
        conns = self.server.conns
        _log.error_log.info("worker_draining", worker=self.index, open_connections=len(conns),
                            deadline_s=deadline_s)
        self.draining.set()
        self.server.stop_accepting()
        for conn in list(conns):
            if conn.idle_scope is not None and conn.requests > 0:
                conn.idle_scope.cancel()
        with trio.move_on_after(deadline_s):
            while conns:
                await trio.sleep(0.02)
        if conns:
            _log.error_log.warning("drain_deadline", worker=self.index, cancelled_connections=len(conns))
        self.conn_nursery.cancel_scope.cancel()
        self.service.cancel_scope.cancel()
        for pool in self.pools.values():
            await pool.aclose()

    def _reload(self) -> None:
        m = metrics()
        try:
            config = load_config(self.config_path, self.overrides)
            problems = reload_problems(self.config, config)
            if problems:
                raise ConfigError(problems)
            runtimes, pools = self._build(config, self.pools)
        except (ConfigError, OSError, ValueError) as exc:
            # The supervisor counts the reload itself (config_reloads_total); a
            # worker failing one the supervisor accepted is a divergence.
            m.worker_reload_failures_total.inc()
            _log.error_log.error("reload_failed", worker=self.index, error=str(exc))
            return
        old, old_runtimes = self.pools, self.runtimes
        self.config, self.runtimes, self.pools = config, runtimes, pools
        for rt in old_runtimes:
            if rt.http is not None:
                rt.http.retired.set()
        for name, pool in old.items():
            if pools.get(name) is not pool:
                self.service.start_soon(pool.aclose)
        for name, pool in pools.items():
            if old.get(name) is not pool:
                self.service.start_soon(pool.run_health_checks)
        _log.error_log.info("reloaded", worker=self.index)


#: File descriptors a worker keeps besides its client connections: upstream
#: connections of requests in flight and idle pools, listening sockets, the
#: metrics files, the engine's memfds and eventfds.
FD_RESERVE = 1024


def _fit_open_files(max_connections: int, worker: int) -> int:
    """Raise RLIMIT_NOFILE so ``max_connections`` clients fit (each in-flight
    request also holds an upstream socket: 2 per connection, plus a reserve),
    up to the hard limit; returns the connection slots that fit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 2 * max_connections + FD_RESERVE
    limit = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if limit > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
            soft = limit
        except (ValueError, OSError) as exc:
            _log.error_log.warning("nofile_limit", worker=worker, error=str(exc))
    # Slots past the limit would only meet EMFILE at accept or at an upstream
    # connect (a 502): cap them at the same budget, 2 descriptors each, and say so.
    fit = max(1, min(max_connections, (soft - min(FD_RESERVE, soft // 4)) // 2))
    if fit < max_connections:
        _log.error_log.warning("max_connections_capped", worker=worker, max_connections=max_connections,
                               slots=fit, open_files_limit=soft,
                               hint="raise the hard RLIMIT_NOFILE (ulimit -Hn, LimitNOFILE=) to serve more")
    return fit


def _under_wrappers(provider: Any, name: str) -> Any:
    """Attribute ``name`` of the vcrypto provider under the provider wrappers
    (counting, fallback), if any: the engine ``frontend``, the ``key_shares`` pool."""
    for _ in range(4):
        found = getattr(provider, name, None)
        if found is not None:
            return found
        provider = getattr(provider, "inner", None) or getattr(provider, "primary", None)
        if provider is None:
            return None
    return None


async def _export_key_shares(pool: Any, interval_s: float = 1.0) -> None:
    """The key-share pool's counters -> crypto_key_shares_total{event} and
    crypto_key_share_refill_failures_total (deltas once a second, as the
    frontend's counters: multiprocess metrics need a Counter per process)."""
    m = metrics()
    events = ("generated", "used", "missed", "expired")
    seen = dict.fromkeys((*events, "refill_failures"), 0)
    while True:
        for name in seen:
            now = getattr(pool.stats, name)
            if now > seen[name]:
                counter = (m.crypto_key_share_refill_failures_total if name == "refill_failures"
                           else m.crypto_key_shares_total.labels(name))
                counter.inc(now - seen[name])
                seen[name] = now
        await trio.sleep(interval_s)


def _keyless_failed(key_ref: str, exc: Exception) -> None:
    metrics().crypto_keyless_failures_total.labels(key_ref).inc()
    _log.error_log.warning("keyless_sign_failed", key_ref=key_ref, error=str(exc))


def _count_inline(op: Any, redone: bool) -> None:
    """A request the engine frontend computed in-process -> crypto_fallbacks_total
    under its op, counted as it runs (the op is already in crypto_ops_total as
    handed to vcrypto): engine away (detached, device down, a session or an
    input it cannot take) or, ``redone``, failed by the device."""
    metrics().crypto_fallbacks_total.labels(op.value, "engine_error" if redone else "engine_unavailable").inc()


async def _export_frontend_fallbacks(frontend: Any, interval_s: float = 1.0) -> None:
    """The engine frontend's stalls (hung engine-backend) and doorbells -> crypto_engine_{stalls,doorbells}_total,
    whether it is attached with the host device up -> crypto_engine_attached (what the
    supervisor's /readyz reads when crypto.fallback is none).

    The frontend keeps plain counters in this process; multiprocess metrics
    need them copied into a Counter, so we add the delta once a second.
    """
    m = metrics()
    counters = {"stalls": m.crypto_engine_stalls_total, "doorbells": m.crypto_engine_doorbells_total}
    seen = dict.fromkeys(counters, 0)
    while True:
        for name, counter in counters.items():
            now = getattr(frontend.stats, name)
            if now > seen[name]:
                counter.inc(now - seen[name])
                seen[name] = now
        frontend.reattach_soon()   # an idle worker notices the engine is back (readiness)
        att = frontend.attachment
        m.crypto_engine_attached.set(1 if frontend.attached and att is not None and att.shared.device_up else 0)
        await trio.sleep(interval_s)


def reload_problems(old: Config, new: Config) -> list[tuple[str, str]]:
    """What a reload cannot change without a restart (sockets, provider); the
    supervisor rejects such a reload before any worker sees it, and each
    worker checks again (it reads the file itself)."""
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
    _malloc.tune()  # bulk buffers reuse heap pages instead of mmap/fault/unmap (_malloc)
    return trio.run(Worker(config_path, index, ports, ready_fd, backend_socket, overrides, ticket_keys_file).run)

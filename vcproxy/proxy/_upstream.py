"""Upstream pools: server choice, connects with retries, keep-alive reuse, health.

A pool belongs to one ``upstreams.<name>`` entry. ``acquire()`` returns an
``UpstreamConn`` (a TCP stream plus its h11 client state): an idle
keep-alive connection when one is fresh, else a new connect to the next
healthy server round-robin, trying up to ``retries`` more servers when a
connect fails. ``release(conn)`` puts a connection whose exchange ended
cleanly back. A pool swapped out by a reload keeps serving the requests that
hold its connections and is closed when they are done.

``send_proxy_protocol: v1|v2``: each new connection starts with a PROXY
header naming the client it is for (``_proxy_header.encode``), written
within the connect timeout; such a connection speaks for that one client, so
it is never put back for reuse by another.

Health: a server is marked unhealthy after ``health_check.unhealthy_after``
consecutive failures (probes, and connects made for requests) and healthy
again after ``healthy_after`` successes. Each transition is reported to the
pool's ``on_health(upstream, server, up, reason)`` (the worker logs it and
counts it); every worker runs its own checks, so each reports what it saw.

Staleness: a server may close an idle keep-alive connection at any time. Before
reuse we poll the socket (no wait): readable means EOF or stray bytes, and
either way the connection is not reusable. That closes the common race
without ever replaying a request.
"""
from __future__ import annotations

import itertools
import select
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import h11
import trio

from vcproxy.config import ServerAddress, UpstreamConfig
from ._proxy_header import Address, encode, encode_local
from ._sockstream import SocketStream


class UpstreamError(Exception):
    """Talking to an upstream failed; ``kind`` is the metrics label."""

    kind = "protocol"

    def __init__(self, upstream: str, message: str) -> None:
        super().__init__(f"upstream {upstream!r}: {message}")
        self.upstream = upstream


class UpstreamConnectError(UpstreamError):
    kind = "connect"


class UpstreamTimeout(UpstreamError):
    kind = "timeout"


class UpstreamClosed(UpstreamError):
    kind = "closed"


@dataclass(eq=False)
class UpstreamConn:
    server: ServerAddress
    stream: SocketStream
    h11: h11.Connection = field(default_factory=lambda: h11.Connection(h11.CLIENT))
    idle_since_s: float = 0.0
    reused: bool = False
    #: how long the TCP connect (and PROXY header) took; the access log's upstream_connect_s
    connect_s: float = 0.0


@dataclass(eq=False)
class _ServerState:
    address: ServerAddress
    healthy: bool = True
    failures: int = 0
    successes: int = 0
    idle: deque[UpstreamConn] = field(default_factory=deque)


def _socket_is_stale(stream: SocketStream) -> bool:
    poller = select.poll()
    poller.register(stream.socket.fileno(), select.POLLIN | select.POLLERR | select.POLLHUP)
    return bool(poller.poll(0))


#: ``on_health(upstream, server, up, reason)``: a server changed state
HealthObserver = Callable[[str, str, bool, str], None]


class UpstreamPool:
    def __init__(self, name: str, config: UpstreamConfig, on_health: HealthObserver | None = None) -> None:
        self.name = name
        self.config = config
        self._on_health = on_health
        self._servers = [_ServerState(a) for a in config.servers]
        self._rr = itertools.cycle(range(len(self._servers)))
        self._closed = False

    def _order(self) -> list[_ServerState]:
        """Servers to try: healthy ones round-robin first, unhealthy last."""
        start = next(self._rr)
        ring = self._servers[start:] + self._servers[:start]
        return [s for s in ring if s.healthy] + [s for s in ring if not s.healthy]

    async def acquire(self, client: Address | None = None, local: Address | None = None) -> UpstreamConn:
        """A connection for a request of ``client`` (who connected to ``local``),
        the addresses a PROXY header names when the upstream wants one."""
        order = self._order()
        if self.config.send_proxy_protocol:
            return await self.connect(order, client, local)
        now = time.monotonic()
        for state in order:
            while state.idle:
                conn = state.idle.pop()  # LIFO: the warmest connection
                if now - conn.idle_since_s > self.config.idle_timeout_s or _socket_is_stale(conn.stream):
                    await _close_quietly(conn.stream)
                    continue
                conn.reused = True
                return conn
        return await self.connect(order)

    async def connect(self, order: list[_ServerState] | None = None, client: Address | None = None,
                      local: Address | None = None) -> UpstreamConn:
        """A new connection to the next server, trying ``retries`` more on failure."""
        if order is None:
            order = self._order()
        attempts = order[: 1 + self.config.retries]
        last: Exception | None = None
        for state in attempts:
            started = time.monotonic()
            try:
                with trio.fail_after(self.config.connect_timeout_s):
                    # (the trio stream only carried the socket: ours pays fewer scheduler passes)
                    stream = SocketStream((await trio.open_tcp_stream(state.address.host,
                                                                      state.address.port)).socket)
                    if self.config.send_proxy_protocol:
                        await self._send_proxy_header(stream, client, local)
            except (OSError, trio.TooSlowError, trio.BrokenResourceError) as exc:
                last = exc
                self._mark(state, ok=False, reason=f"connect failed: {_reason(exc)}")
                continue
            self._mark(state, ok=True, reason="connect succeeded")
            return UpstreamConn(state.address, stream, connect_s=time.monotonic() - started)
        reason = _reason(last)
        raise UpstreamConnectError(self.name, f"connect to {', '.join(str(s.address) for s in attempts)} failed: {reason}")

    async def _send_proxy_header(self, stream: SocketStream, client: Address | None,
                                 local: Address | None) -> None:
        version = self.config.send_proxy_protocol
        try:
            if not (client and client[0] and local and local[0]):
                header = encode_local(version)  # no client: a connection of our own (a probe)
            else:
                header = encode(version, client, local)
            await stream.send_all(header)
        except BaseException:
            await _close_quietly(stream)
            raise

    def release(self, conn: UpstreamConn) -> bool:
        """Keep ``conn`` for reuse if its exchange ended cleanly; returns whether kept."""
        if self.config.send_proxy_protocol:
            return False  # its PROXY header named one client
        if self._closed or conn.h11.our_state is not h11.DONE or conn.h11.their_state is not h11.DONE:
            return False
        try:
            conn.h11.start_next_cycle()
        except h11.LocalProtocolError:
            return False
        state = next(s for s in self._servers if s.address == conn.server)
        if len(state.idle) >= self.config.max_idle_connections:
            return False
        conn.idle_since_s = time.monotonic()
        state.idle.append(conn)
        return True

    def _mark(self, state: _ServerState, ok: bool, reason: str) -> None:
        hc = self.config.health_check
        was = state.healthy
        if ok:
            state.failures, state.successes = 0, state.successes + 1
            if not state.healthy and state.successes >= hc.healthy_after:
                state.healthy = True
        else:
            state.successes, state.failures = 0, state.failures + 1
            if state.failures >= hc.unhealthy_after:
                state.healthy = False
        if state.healthy is not was and self._on_health is not None:
            self._on_health(self.name, str(state.address), state.healthy, reason)

    def servers(self) -> list[tuple[str, bool]]:
        """Every server (``host:port``) with whether it is healthy now."""
        return [(str(s.address), s.healthy) for s in self._servers]

    def healthy_servers(self) -> list[ServerAddress]:
        return [s.address for s in self._servers if s.healthy]

    async def run_health_checks(self) -> None:
        """Probe every server each ``interval_s`` (a TCP connect, or GET ``path``)."""
        hc = self.config.health_check
        if not hc.enabled:
            return
        while not self._closed:
            for state in self._servers:
                failed = await self._probe(state.address)
                self._mark(state, ok=failed is None, reason=f"probe failed: {failed}" if failed else "probe succeeded")
            await trio.sleep(hc.interval_s)

    async def _probe(self, address: ServerAddress) -> str | None:
        """One health probe: None if healthy, else why not."""
        hc = self.config.health_check
        with trio.move_on_after(hc.timeout_s):
            try:
                stream = await trio.open_tcp_stream(address.host, address.port)
            except OSError as exc:
                return f"connect: {_reason(exc)}"
            try:
                if self.config.send_proxy_protocol:
                    await stream.send_all(encode_local(self.config.send_proxy_protocol))
                if hc.path is None:
                    return None
                conn = h11.Connection(h11.CLIENT)
                host = str(address).encode()
                await stream.send_all(conn.send(h11.Request(
                    method="GET", target=hc.path, headers=[("Host", host), ("Connection", "close")])))
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        data = await stream.receive_some(65536)
                        conn.receive_data(data)
                        if not data:
                            return "closed before a response"
                    elif isinstance(event, h11.Response):
                        return None if 200 <= event.status_code < 400 else f"GET {hc.path}: {event.status_code}"
                    elif isinstance(event, h11.ConnectionClosed):
                        return "closed before a response"
            except (OSError, trio.BrokenResourceError, h11.ProtocolError) as exc:
                return f"{type(exc).__name__}: {exc}"
            finally:
                await _close_quietly(stream)
        return f"timed out after {hc.timeout_s}s"

    async def aclose(self) -> None:
        self._closed = True
        for state in self._servers:
            while state.idle:
                await _close_quietly(state.idle.pop().stream)


def _reason(exc: BaseException | None) -> str:
    if isinstance(exc, trio.TooSlowError):
        return "timed out"
    return getattr(exc, "strerror", None) or str(exc)


async def _close_quietly(stream: trio.abc.AsyncResource) -> None:
    with trio.CancelScope(shield=True):
        try:
            await stream.aclose()
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass

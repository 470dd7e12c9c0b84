"""Listeners: SO_REUSEPORT sockets, the accept loop, and one connection's life.

Per connection, in this order:

1. count bytes on the raw socket (``CountingStream``: TLS records included);
1a. ``listeners[].proxy_protocol``: a peer outside ``trusted_proxies`` is
   closed unread; from a trusted one, the PROXY header
   (``_proxy_header``) must arrive within ``limits.handshake_timeout_s``
   and its client address replaces the peer's in ``ConnState``; the bytes
   after it are handed back to the stream (``CountingStream.unread``);
2. the TLS seam: ``TLSStream`` over that stream, handshake under
   ``limits.handshake_timeout_s``, metrics by result/version/suite/resumed;
   after it, TLS faults read as a broken transport (``TLSErrorsAsBroken``),
   so the cores below never import the TLS stack. ``tls.enabled: false``
   skips this step;
3. the listener mode's core (``HttpProxyConnection``, or ``H2ProxyConnection``
   when ALPN chose ``h2``, or ``serve_tcp``), which
   only ever sees a ``trio.abc.Stream``.

``limits.max_connections`` slots (``_slots.ConnectionSlots``) are taken
*before* ``accept()``: past the limit, connections wait in the kernel backlog
instead of being accepted and starved, unless connections that never finished
their handshake, or idle keep-alive ones, can be shed to make room (see
``_slots``). Steps 1a and 2 are the connection's *opening* phase, under one
deadline (the handshake timeout; tighter under pressure). Each connection
reads the ``ListenerRuntime`` current when it was accepted: a reload swaps
runtimes for new connections only.
"""
from __future__ import annotations

import errno
import socket as stdsocket
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import ip_address
from typing import Any

import trio

from vcproxy import _log
from vcproxy.config import Config, ListenerConfig
from vcproxy.metrics import metrics
from vcproxy.tls import CryptoProvider, HandshakeTimeout, ServerConfig, TLSAlertReceived, TLSError, TLSStream
from ._counts import PENDING
from ._forwarding import is_trusted
from ._h2 import H2ProxyConnection
from ._http import ConnState, HttpProxyConnection, HttpRuntime, Observer, _close
from ._proxy_header import ProxyProtocolError, parse_proxy_header
from ._slots import ConnectionSlots
from ._sockstream import SocketStream
from ._tcp import serve_tcp
from ._upstream import UpstreamPool

LISTEN_BACKLOG = 4096
#: accept() failures that mean "not now" (the client stays in the backlog)
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
#: accept() errors that concern one client only (it went away, or a network
#: error was pending on it; accept(2) "Error handling"): skip it, take the
#: next. trio's SocketListener ignores the same set.
_CLIENT_ACCEPT_ERRORS = frozenset(getattr(errno, name) for name in (
    "ECONNABORTED", "EPROTO", "EPERM", "ENETDOWN", "ENOPROTOOPT", "EHOSTDOWN", "ENONET",
    "EHOSTUNREACH", "EOPNOTSUPP", "ENETUNREACH") if hasattr(errno, name))
ACCEPT_RETRY_S = 0.1
PROXY_HEADER_READ_BYTES = 4096
#: Consecutive accepts that did not wait before the next one yields to the scheduler.
YIELD_AFTER_ACCEPTS = 4

_checkpoint_if_cancelled = trio.lowlevel.checkpoint_if_cancelled
_cancel_shielded_checkpoint = trio.lowlevel.cancel_shielded_checkpoint
_wait_readable = trio.lowlevel.wait_readable


class CountingStream(trio.abc.Stream):
    """Counts the bytes that cross the client socket (TLS records included).

    A counter increment is a write into the multiprocess metrics file (lock,
    pid check, pack), so bytes are added up here and reach the counters every
    ``COUNT_STEP_BYTES`` and when the stream closes: a few writes per
    connection instead of one per socket call. ``add(counter, amount)`` makes
    the increment (the listener passes ``_counts.PENDING.inc``: batched, so a
    short connection's two byte counts cost no file write of their own).
    """

    COUNT_STEP_BYTES = 1 << 16

    def __init__(self, inner: trio.abc.HalfCloseableStream, counter_in: Any, counter_out: Any,
                 add: Callable[[Any, float], None] | None = None) -> None:
        self.inner = inner
        self._in = counter_in
        self._out = counter_out
        self._add = add if add is not None else _inc
        self._in_pending = 0
        self._out_pending = 0
        self._unread = b""

    def unread(self, data: bytes) -> None:
        """Give back bytes read past a PROXY header: the next receive returns them first."""
        self._unread = bytes(data)

    async def send_all(self, data) -> None:
        await self.inner.send_all(data)
        self._count_out(len(data))

    async def send_all_within(self, data, timeout_s: float) -> None:
        """``SocketStream.send_all_within``: bounded, a deadline scope only to wait."""
        await self.inner.send_all_within(data, timeout_s)
        self._count_out(len(data))

    def _count_out(self, size: int) -> None:
        pending = self._out_pending + size
        if pending >= self.COUNT_STEP_BYTES:
            self._add(self._out, pending)
            pending = 0
        self._out_pending = pending

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes=None) -> bytes:
        if self._unread:
            data, self._unread = self._unread, b""
            return data
        data = await self.inner.receive_some(max_bytes)
        pending = self._in_pending + len(data)
        if pending >= self.COUNT_STEP_BYTES:
            self._add(self._in, pending)
            pending = 0
        self._in_pending = pending
        return data

    def flush_counts(self) -> None:
        if self._in_pending:
            self._add(self._in, self._in_pending)
            self._in_pending = 0
        if self._out_pending:
            self._add(self._out, self._out_pending)
            self._out_pending = 0

    async def send_eof(self) -> None:
        await self.inner.send_eof()

    async def aclose(self) -> None:
        try:
            await self.inner.aclose()
        finally:
            self.flush_counts()


def _inc(counter: Any, amount: float) -> None:
    counter.inc(amount)


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

    async def send_all_within(self, data, timeout_s: float) -> None:
        """``TLSStream.send_all_within``: ``trio.TooSlowError`` after ``timeout_s``."""
        try:
            await self.tls.send_all_within(data, timeout_s)
        except TLSError as exc:
            raise trio.BrokenResourceError(f"TLS: {exc}") from exc

    def write(self, data) -> None:
        """Cork ``data``: the next ``send_all`` or the close sends it (``TLSStream.write``)."""
        self.tls.write(data)

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


def bind_reuseport(address: str, port: int) -> stdsocket.socket:
    family = stdsocket.AF_INET6 if ":" in address else stdsocket.AF_INET
    sock = stdsocket.socket(family, stdsocket.SOCK_STREAM)
    sock.setsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_REUSEADDR, 1)
    sock.setsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_REUSEPORT, 1)
    # Accepted sockets inherit TCP_NODELAY on Linux: one setsockopt here
    # instead of one per connection (SocketStream(nodelay_inherited=True)).
    sock.setsockopt(stdsocket.IPPROTO_TCP, stdsocket.TCP_NODELAY, 1)
    sock.setblocking(False)
    return sock


async def open_listener(address: str, port: int) -> stdsocket.socket:
    """A listening socket (non-blocking, stdlib: the accept loop calls
    ``accept()`` on it itself, see ``ConnectionServer._accept``)."""
    sock = bind_reuseport(address, port)
    await trio.socket.from_stdlib_socket(sock).bind((address, port))  # (resolves a name off the loop)
    sock.listen(LISTEN_BACKLOG)
    return sock


class _ListenerMetrics:
    """One listener's labelled metric children, looked up once (``labels()``
    costs a lock and a dict lookup; a connection used to pay it ~15 times)."""

    def __init__(self, name: str) -> None:
        m = metrics()
        self.name = name
        self.connections_total = m.connections_total.labels(name)
        self.connections_active = m.connections_active.labels(name)
        self.bytes_received = m.bytes_received_total.labels(name)
        self.bytes_sent = m.bytes_sent_total.labels(name)
        self.handshake_seconds = m.tls_handshake_seconds.labels(name)
        self.proxy_protocol = {r: m.proxy_protocol_total.labels(name, r)
                               for r in ("ok", "untrusted", "invalid", "timeout")}
        for phase in ("handshake", "idle"):  # exported from the start, 0 until a shed (_slots counts them)
            m.connections_shed_total.labels(name, phase)
        self._handshakes: dict[tuple[str, str, str, str, str], Any] = {}

    def handshake_done(self, result: str, version: str = "", suite: str = "", resumed: str = "",
                       group: str = "") -> None:
        key = (result, version, suite, resumed, group)
        child = self._handshakes.get(key)
        if child is None:
            child = self._handshakes[key] = metrics().tls_handshakes_total.labels(self.name, *key)
        child.inc()


class ConnectionServer:
    """Accepts on every listener socket and runs each connection to its end."""

    def __init__(self, runtimes: Callable[[], list[ListenerRuntime]], provider: CryptoProvider,
                 observer: Observer, max_connections: int, draining: trio.Event) -> None:
        self.runtimes = runtimes
        self.provider = provider
        self.observer = observer
        self.slots = ConnectionSlots(max_connections)
        self.draining = draining
        self.conns = self.slots.conns  # every open connection (the worker's drain reads it)
        self.accept_scope = trio.CancelScope()
        self._metrics: dict[str, _ListenerMetrics] = {}
        self._accepts_in_a_row = 0

    async def serve(self, sockets: list, conn_nursery: trio.Nursery) -> None:
        """Accept until ``accept_scope`` is cancelled, then close the sockets."""
        self.conn_nursery = conn_nursery
        # A socket bound to one address: every connection it accepts has that
        # local address (no getsockname() per connection); a wildcard bind
        # asks each connection (None here).
        self._local_addresses = [None if ip_address(addr[0]).is_unspecified else addr[:2]
                                 for addr in (sock.getsockname() for sock in sockets)]
        with self.accept_scope:
            async with trio.open_nursery() as nursery:
                for i, sock in enumerate(sockets):
                    nursery.start_soon(self._accept_loop, i, sock)
        for sock in sockets:
            trio.lowlevel.notify_closing(sock)
            sock.close()

    def stop_accepting(self) -> None:
        self.accept_scope.cancel()

    async def _accept_loop(self, index: int, sock: stdsocket.socket) -> None:
        slots = self.slots
        semaphore = slots.semaphore
        while True:
            if semaphore.value == 0:
                # All slots taken: wait for a client in the backlog, then make room if we can.
                await _wait_readable(sock)
                slots.shed_for_newcomer()
                await semaphore.acquire()
            else:
                semaphore.acquire_nowait()  # (_accept is the checkpoint)
            try:
                client, addr = await self._accept(sock)
            except OSError as exc:
                semaphore.release()
                if exc.errno not in _OUT_OF_RESOURCES:
                    raise
                # Out of file descriptors or memory: the client stays in the
                # backlog; shed what we can and try again shortly.
                _log.error_log.warning("accept_failed", error=str(exc), open_connections=slots.taken)
                slots.shed_for_newcomer(force=True)
                await trio.sleep(ACCEPT_RETRY_S)
                continue
            except BaseException:
                semaphore.release()
                raise
            self.conn_nursery.start_soon(self._connection, index, client, addr)

    async def _accept(self, sock: stdsocket.socket) -> tuple[trio.socket.SocketType, Any]:
        """The next client: ``accept()`` on the non-blocking socket, waiting
        only when the backlog is empty.

        Why not trio's ``sock.accept()``: it yields to the scheduler after every
        accept that did not block (and the slot semaphore's ``acquire`` once
        more): two scheduler passes per connection that buy nothing while
        clients keep arriving. Here an accept that completes at once is a
        cancellation point only (``stop_accepting`` still ends the loop at the
        next one); after ``YIELD_AFTER_ACCEPTS`` of them in a row the next
        yields, so a connect flood cannot hold the worker's loop.
        """
        await _checkpoint_if_cancelled()
        while True:
            try:
                client, addr = sock.accept()
                break
            except BlockingIOError:
                self._accepts_in_a_row = 0
                await _wait_readable(sock)
            except OSError as exc:
                if exc.errno not in _CLIENT_ACCEPT_ERRORS:
                    raise
                # (one client's failure, not the listener's: it must not end the
                # accept loop and with it the worker)
        self._accepts_in_a_row += 1
        if self._accepts_in_a_row >= YIELD_AFTER_ACCEPTS:
            self._accepts_in_a_row = 0
            await _cancel_shielded_checkpoint()
        return trio.socket.from_stdlib_socket(client), addr

    # ------------------------------------------------------------ one connection

    async def _connection(self, index: int, sock, addr) -> None:
        rt = self.runtimes()[index]
        lm = self._metrics.get(rt.name)
        if lm is None:
            lm = self._metrics[rt.name] = _ListenerMetrics(rt.name)
        # (batched: _counts; the active gauge's +1 and -1 of a short connection
        # cancel out within one flush and cost no file write at all)
        PENDING.inc(lm.connections_total)
        active = lm.connections_active
        PENDING.inc(active, 1)
        conn = ConnState(addr[0], addr[1], self.draining)
        local = self._local_addresses[index]
        conn.local_host, conn.local_port = local if local is not None else sock.getsockname()[:2]
        slots = self.slots
        slots.admit(conn, rt.name)
        counting = CountingStream(SocketStream(sock, nodelay_inherited=True), lm.bytes_received, lm.bytes_sent, PENDING.inc)
        stream: trio.abc.Stream | None = counting
        try:
            lis = rt.config.listeners[index]
            step = "proxy_header"
            with slots.opening_scope(conn, rt.config.limits) as opening:
                if lis.proxy_protocol and not await self._proxy_header(counting, conn, lis, rt, lm):
                    return
                step = "handshake"
                if rt.tls is not None:
                    stream = await self._handshake(counting, rt, lm, conn)
                    if stream is None:
                        return
            slots.opened(conn)
            if opening.cancelled_caught:  # shed, or the opening deadline passed
                if conn in slots.shed:
                    pass  # counted as shed
                elif step == "proxy_header":
                    lm.proxy_protocol["timeout"].inc()  # (the same deadline: it fired first)
                elif rt.tls is not None:
                    lm.handshake_done("timeout")
                return
            if rt.mode == "http" and isinstance(stream, TLSErrorsAsBroken) and stream.tls.alpn_protocol == "h2":
                await H2ProxyConnection(stream, conn, rt.http, self.observer).serve()
            elif rt.mode == "http":
                await HttpProxyConnection(stream, conn, rt.http, self.observer).serve()
            else:
                await serve_tcp(stream, conn, rt.tcp_pool, rt.config.limits.idle_timeout_s, rt.name, self.observer)
        except Exception as exc:  # noqa: BLE001 - one connection's bug must not take the worker down
            _log.error_log.error("connection_failed", listener=rt.name, client=addr[0],
                                 error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
        finally:
            await _close(stream if stream is not None else counting)
            slots.release(conn)
            PENDING.inc(active, -1)

    async def _proxy_header(self, stream: CountingStream, conn: ConnState, lis: ListenerConfig,
                            rt: ListenerRuntime, lm: _ListenerMetrics) -> bool:
        """Read the PROXY header; True: ``conn`` now names the original client.

        The spec: "the receiver MUST be configured to only receive the protocol
        ... and MUST not try to guess whether the protocol header is present";
        a peer that is not a trusted proxy could claim any client address."""
        peer = conn.client_host
        if not is_trusted(peer, lis.trusted_proxies):
            lm.proxy_protocol["untrusted"].inc()
            _log.error_log.debug("proxy_protocol_refused", listener=rt.name, peer=peer, reason="untrusted")
            return False
        buf = b""
        try:
            with trio.fail_after(rt.config.limits.handshake_timeout_s):
                while (parsed := parse_proxy_header(buf)) is None:
                    data = await stream.receive_some(PROXY_HEADER_READ_BYTES)
                    if not data:
                        raise ProxyProtocolError("closed before a whole header")
                    buf += data
        except (ProxyProtocolError, trio.TooSlowError, trio.BrokenResourceError, OSError) as exc:
            result = "timeout" if isinstance(exc, trio.TooSlowError) else "invalid"
            lm.proxy_protocol[result].inc()
            _log.error_log.debug("proxy_protocol_refused", listener=rt.name, peer=peer, reason=result,
                                 error=f"{type(exc).__name__}: {exc}")
            return False
        header, used = parsed
        stream.unread(buf[used:])
        lm.proxy_protocol["ok"].inc()
        conn.proxied_by = peer
        if header.source is not None and header.destination is not None:
            conn.client_host, conn.client_port = header.source
            conn.local_host, conn.local_port = header.destination
        return True

    async def _handshake(self, raw: trio.abc.Stream, rt: ListenerRuntime,
                         lm: _ListenerMetrics, conn: ConnState) -> trio.abc.Stream | None:
        tls = TLSStream(raw, rt.tls, self.provider)
        started = time.monotonic()
        result = "ok"
        try:
            # limits.handshake_timeout_s is the ServerConfig's: do_handshake
            # enforces it itself (HandshakeTimeout); the connection's opening
            # scope (shedding, the deadline under pressure) may end it first.
            await tls.do_handshake()
        except trio.Cancelled:
            # cut off from outside: the stream still releases its AEAD
            # sessions (vcrypto sessions at the host) and its transport
            with trio.CancelScope(shield=True):
                await tls.aclose()
            raise
        except TLSError as exc:
            result = "timeout" if isinstance(exc, HandshakeTimeout) else "error"
            # info, with the client and the alert: what an operator needs to
            # tell a misconfigured client from a scanner
            _log.error_log.info("handshake_failed", listener=rt.name, client=conn.client_host,
                                client_port=conn.client_port, alert=exc.alert.name,
                                alert_from="client" if isinstance(exc, TLSAlertReceived) else "proxy",
                                error=f"{type(exc).__name__}: {exc}")
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            result = "error"
            _log.error_log.info("handshake_failed", listener=rt.name, client=conn.client_host,
                                client_port=conn.client_port, alert=None,
                                error=f"{type(exc).__name__}: {exc}")
        if result != "ok":
            lm.handshake_done(result)
            await _close(raw)
            return None
        PENDING.observe(lm.handshake_seconds, time.monotonic() - started)  # (batched: _counts)
        # version label in the config's words: "1.2" / "1.3" (TLSStream.version says "TLSv1.2")
        # group: the key exchange's (e.g. X25519MLKEM768; "" for a TLS 1.3
        # resumption without (EC)DHE) -- metrics label and access log field
        group = tls.named_group or ""
        lm.handshake_done("ok", (tls.version or "").removeprefix("TLSv"), tls.cipher_suite or "",
                          "true" if tls.resumed else "false", group)
        conn.tls.update(tls_version=tls.version or "", tls_cipher=tls.cipher_suite or "",
                        tls_sni=tls.server_name or "", tls_resumed=bool(tls.resumed), tls_group=group)
        return TLSErrorsAsBroken(tls)

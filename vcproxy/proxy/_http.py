"""HTTP/1.1 reverse proxying over any trio Stream (plain TCP or ``TLSStream``).

Theory of operation. One ``HttpProxyConnection`` serves one client
connection: an h11 server state machine reads requests; each request is
routed (Host + path prefix) to an upstream pool, whose h11 client connection
carries it. The exchange runs two tasks:

- the *body pump* moves request body chunks client -> upstream as they
  arrive (never buffering a whole body), counting them against
  ``max_body_bytes``;
- the *relay* waits for the upstream response head, forwards it, then moves
  response body chunks upstream -> client.

They run concurrently so an upstream that answers before reading the whole
body (an early 413, say) is relayed at once; the client connection is then
closed, since its unread body leaves it unusable. Backpressure is natural:
each chunk is sent before the next is read.

Writes to the client are coalesced: what h11 produces for the response
(head, body chunks, end) is queued and sent when the relay is about to wait
for the upstream, when the queue reaches ``READ_CHUNK_BYTES``, or at the end
of the response. A small response whose upstream answered in one read thus
leaves in one ``send_all`` (one TLS record, one syscall) instead of two or
three. When that response is the connection's last (h11 says MUST_CLOSE) and
the stream can cork (``write(data)``: queue without I/O, as ``TLSStream``
offers), the final bytes are corked instead, so the close that follows sends
them with the TLS close_notify in one segment.

What the client gets when something fails, decided in one place
(``_fail_status``) and only while no response byte has been sent:
400 malformed request (h11's verdict), 400/405/505 a request line that
``_requestline`` refuses, 431 head too large, 413 body too large,
404 no route, 502 upstream connect failure or broken upstream response,
504 upstream read or write timeout. After the response head has gone out, a failure
can only be signalled by closing the connection.

Hop-by-hop headers (RFC 9110 §7.6.1: Connection and the fields it names,
Keep-Alive, Proxy-*, TE, Trailer, Transfer-Encoding, Upgrade) are removed in
both directions; h11 re-frames each side itself. X-Forwarded-For, -Proto,
-Host (and optionally Forwarded and Via) are set on the way up by
``_forwarding``: appended to from a trusted proxy, replaced from anyone else.

Access record (one per request, HTTP/1.1 and HTTP/2 alike): ``request_id``
(``X-Request-Id``, a trusted hop's or one of ours: ``request_id``, sent
upstream), ``user_agent``, ``bytes_in``/``bytes_out`` (HTTP/1.1: the request
and response as exchanged on the connection, head and body, before TLS;
HTTP/2: DATA payloads), ``upstream_connect_s`` (0 for a reused
connection, ``upstream_reused``) and ``upstream_response_s`` (request head
sent to response head received), plus the connection's TLS fields.

Upgrades (RFC 9110 §7.8): a request with ``Connection: upgrade`` and
``Upgrade: websocket`` keeps those two fields on the way up (no other
protocol is offered upstream: ``h2c`` or anything we cannot check stays
stripped). If the upstream answers ``101 Switching Protocols``, the 101 is
relayed and both connections stop being HTTP: ``_splice`` pumps bytes both
ways (what either h11 side had already buffered goes first) until one side
closes or ``limits.idle_timeout_s`` passes with no byte. Any other answer is
an ordinary response and the connection stays HTTP/1.1.
"""
from __future__ import annotations

import contextlib
import functools
import itertools
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import h11
import trio

from vcproxy.config import Config
from ._forwarding import FORWARDING_FIELDS, Forwarding
from ._requestline import RequestLineError, check_request_line
from ._router import Router, normalise_host
from ._splice import splice
from ._upstream import UpstreamClosed, UpstreamConn, UpstreamError, UpstreamPool, UpstreamTimeout

READ_CHUNK_BYTES = 256 * 1024
DRAIN_FIRST_REQUEST_WAIT_S = 1.0
#: After answering a request whose body was not read (413, an upstream
#: failure mid-upload), read and drop what the client still sends for at
#: most this long / this many bytes before closing (see _drain_unread_request).
LINGER_UNREAD_S = 2.0
LINGER_UNREAD_BYTES = 8 * 1024 * 1024
#: The last response of a connection is corked into the close (see the module
#: docstring) only up to this size: a socket buffer always takes it at once,
#: so the close's short linger never has to wait for a slow reader.
CORK_LAST_RESPONSE_MAX_BYTES = 16 * 1024

_HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization",
    b"proxy-connection", b"te", b"trailer", b"transfer-encoding", b"upgrade",
})
#: Upgrade protocols passed through to the upstream (RFC 6455 WebSocket); any
#: other ``Upgrade`` offer is stripped like every hop-by-hop field.
_UPGRADES_FORWARDED = frozenset({b"websocket"})
#: h11's events are frozen: one end-of-message (without trailers) serves every request.
#: (Events are told apart with ``type(event) is``, as h11 does: its event
#: classes have no subclasses, and ``isinstance`` on them, ABCs, goes through
#: ``ABCMeta.__instancecheck__`` several times per request.)
_END_OF_MESSAGE = h11.EndOfMessage()

# Request ids: a random per-process prefix and a counter (unique without a
# uuid4 per request: 12 + 10 hex digits, cheap to make and to grep).
_REQUEST_ID_PREFIX = os.urandom(6).hex()
_request_ids = itertools.count(1)


def request_id(forwarding: Forwarding, headers: list[tuple[bytes, bytes]], client_host: str) -> str:
    """The request's id: a trusted hop's ``X-Request-Id`` (``Forwarding``), else a new one."""
    return forwarding.trusted_request_id(headers, client_host) or f"{_REQUEST_ID_PREFIX}{next(_request_ids):010x}"


class Observer(Protocol):
    """Where the proxy reports what happened (metrics + access log in a worker)."""

    def request_done(self, record: dict[str, Any], seconds: float) -> None: ...

    def upstream_error(self, upstream: str, kind: str) -> None: ...


class NullObserver:
    def request_done(self, record: dict[str, Any], seconds: float) -> None:
        pass

    def upstream_error(self, upstream: str, kind: str) -> None:
        pass


@dataclass(frozen=True, eq=False)
class HttpRuntime:
    """What a connection reads from the config; a reload makes a new one."""

    config: Config
    listener: str
    scheme: str  # "https" or "http": the X-Forwarded-Proto value
    router: Router
    pools: dict[str, UpstreamPool]
    #: trusted hops, X-Forwarded-*, Forwarded, Via (``listeners[].trusted_proxies``, ``forwarded``, ``via``)
    forwarding: Forwarding = Forwarding()
    #: Set when a reload replaces this runtime: HTTP/2 connections send GOAWAY
    #: so their clients reconnect to the new config.
    retired: trio.Event = field(default_factory=trio.Event)


@dataclass(eq=False)
class ConnState:
    """One client connection as the worker sees it (for drain and idle handling)."""

    client_host: str
    client_port: int
    draining: trio.Event
    idle_scope: trio.CancelScope | None = None
    requests: int = 0
    tls: dict[str, Any] = field(default_factory=dict)
    #: the address the client connected to (what a PROXY header we send names
    #: as destination); ``client_host``/``client_port`` and this come from the
    #: PROXY header the listener received, when it requires one
    local_host: str = ""
    local_port: int = 0
    #: the peer that sent the PROXY header (a load balancer), else None
    proxied_by: str | None = None


class _ClientGone(Exception):
    """The client closed, broke or stalled; nothing more can be said to it."""


class _BodyTooLarge(Exception):
    pass


def _comma_tokens(headers: list[tuple[bytes, bytes]], name: bytes) -> set[bytes]:
    return {t.strip().lower() for n, v in headers if n == name for t in v.split(b",")}


def _upgrade_offer(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    """The ``Upgrade`` value to forward, if the request asks for one we pass through.

    RFC 9110 §7.8: "A sender of Upgrade MUST also send an "Upgrade" connection
    option in the Connection header field"; without it the field is ignored."""
    if b"upgrade" not in _comma_tokens(headers, b"connection"):
        return None
    offered = _comma_tokens(headers, b"upgrade")
    if len(offered) != 1 or not offered <= _UPGRADES_FORWARDED:
        return None
    return _header(headers, b"upgrade")


def _strip_hop_by_hop(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    named = set()
    for name, value in headers:
        if name == b"connection":
            named.update(v.strip().lower() for v in value.split(b","))
    return [(n, v) for n, v in headers if n not in _HOP_BY_HOP and n not in named]


class HttpProxyConnection:
    def __init__(self, stream: trio.abc.Stream, conn: ConnState, runtime: HttpRuntime,
                 observer: Observer) -> None:
        self.stream = stream
        self.conn = conn
        self.rt = runtime
        self.limits = runtime.config.limits
        self.observer = observer
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=self.limits.max_header_bytes)
        # The status of the response head already committed (queued or sent) for
        # the current request (None: nothing yet, so a failure can still become
        # an error response).
        self._sent_status: int | None = None
        # Response bytes queued for the client, not sent yet (see the module
        # docstring): h11's buffers as they came, joined once at the flush (a
        # lone body chunk, the bulk case, is sent as is: no copy at all).
        self._client_out: list[bytes] = []
        self._client_out_bytes = 0
        # Bytes read from / queued for the client since the last access record.
        self._bytes_in = self._bytes_out = 0
        self._request_id: str | None = None
        self._upstream_head_at = 0.0  # when the current response head arrived from upstream
        # the stream's bounded send (the listener's TLS and TCP streams have one), else a scope per flush
        self._send_within = getattr(stream, "send_all_within", None)

    # ---------------------------------------------------------------- client I/O

    async def _receive(self, timeout_s: float) -> None:
        # A bare deadline scope, not fail_after: its context-manager wrapper
        # costs more than the scope, on every read of every request.
        try:
            with trio.CancelScope(deadline=trio.current_time() + timeout_s) as scope:
                data = await self.stream.receive_some(READ_CHUNK_BYTES)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise _ClientGone(f"client read failed: {exc}") from exc
        if scope.cancelled_caught:
            raise _ClientGone("client read timed out")
        self._bytes_in += len(data)
        self.h11.receive_data(data)

    async def _next_client_event(self, timeout_s: float) -> Any:
        while True:
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                return event
            await self._receive(timeout_s)

    def _queue_client(self, event: Any) -> None:
        """h11's bytes for ``event``, queued until the next ``_flush_client``."""
        data = self.h11.send(event)
        if data:
            self._client_out.append(data)
            self._client_out_bytes += len(data)
            self._bytes_out += len(data)

    def _take_client_out(self) -> bytes:
        parts = self._client_out
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        self._client_out = []
        self._client_out_bytes = 0
        return data

    async def _flush_client(self) -> None:
        if not self._client_out:
            return
        data = self._take_client_out()
        # Bounded: a client that stops reading must not hold its connection,
        # its upstream connection and a worker's memory forever. The deadline
        # is per flush (one response head or one body chunk, <= 256 KiB).
        timeout_s = self.limits.send_timeout_s
        timed_out = False
        try:
            if self._send_within is not None:  # (a deadline scope only where it waits)
                await self._send_within(data, timeout_s)
            else:
                with trio.CancelScope(deadline=trio.current_time() + timeout_s) as scope:
                    await self.stream.send_all(data)
                timed_out = scope.cancelled_caught
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise _ClientGone(f"client write failed: {exc}") from exc
        except trio.TooSlowError:
            timed_out = True
        if timed_out:
            raise _ClientGone(f"client took no response bytes within {timeout_s}s")

    async def _send_client(self, event: Any) -> None:
        self._queue_client(event)
        await self._flush_client()

    async def _finish_response(self) -> None:
        """Send what is queued; the connection's last response is corked into the close."""
        write = getattr(self.stream, "write", None)
        if (write is not None and self.h11.our_state is h11.MUST_CLOSE
                and self._client_out_bytes <= CORK_LAST_RESPONSE_MAX_BYTES):
            data = self._take_client_out()
            try:
                write(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                raise _ClientGone(f"client write failed: {exc}") from exc
            return
        await self._flush_client()

    async def _wait_next_request(self) -> Any:
        """The next request head, or None when the connection should end quietly.

        Before the first byte of a request the connection is *idle*: the idle
        timeout applies and a drain may cancel the wait. Once bytes arrive
        the header timeout applies and a drain lets the request finish.
        """
        if not self.h11.trailing_data[0]:
            wait_s = self.limits.idle_timeout_s
            if self.conn.draining.is_set():
                if self.conn.requests:
                    return None
                # Accepted just before the drain: its first request may be on the way.
                wait_s = min(wait_s, DRAIN_FIRST_REQUEST_WAIT_S)
            # One scope is both the idle timeout (its deadline) and what a
            # drain cancels: either way the connection ends quietly.
            try:
                with trio.CancelScope(deadline=trio.current_time() + wait_s) as scope:
                    self.conn.idle_scope = scope
                    data = await self.stream.receive_some(READ_CHUNK_BYTES)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                return None
            finally:
                self.conn.idle_scope = None
            if scope.cancelled_caught:
                return None
            self._bytes_in += len(data)
            self.h11.receive_data(data)
        try:
            event = await self._next_client_event(self.limits.header_timeout_s)
        except _ClientGone:
            return None
        if type(event) is h11.ConnectionClosed:
            return None
        return event

    # ---------------------------------------------------------------- main loop

    async def serve(self) -> None:
        await self._serve_requests()
        await self._drain_unread_request()

    async def _drain_unread_request(self) -> None:
        """Close politely when we answered before reading the whole request (413,
        a 4xx/5xx mid-upload): closing a socket with unread bytes makes the
        kernel send a reset, which can destroy the response on its way before
        the client (still busy sending its body) reads it (RFC 9112 §9.6). So
        the response goes out now, then what the client still sends is read
        and dropped, bounded in time and bytes, until it closes."""
        if self.h11.their_state is not h11.SEND_BODY:
            return
        try:
            await self._flush_client()
            with trio.move_on_after(LINGER_UNREAD_S):
                drained = 0
                while drained < LINGER_UNREAD_BYTES:
                    data = await self.stream.receive_some(READ_CHUNK_BYTES)
                    if not data:
                        return
                    drained += len(data)
        except (_ClientGone, trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass

    async def _serve_requests(self) -> None:
        try:
            while True:
                try:
                    request = await self._wait_next_request()
                except h11.RemoteProtocolError as exc:
                    await self._send_error(exc.error_status_hint, str(exc), None, time.monotonic())
                    return
                if request is None:
                    return
                keep_going = await self._handle(request)
                if not keep_going or self.conn.draining.is_set():
                    return
                if self.h11.our_state is not h11.DONE or self.h11.their_state is not h11.DONE:
                    return
                self.h11.start_next_cycle()
                self._sent_status = None
        except _ClientGone:
            return

    async def _handle(self, request: h11.Request) -> bool:
        """Proxy one request; returns whether the connection may serve another."""
        started = time.monotonic()
        self.conn.requests += 1
        headers = list(request.headers)
        host = normalise_host(_header(headers, b"host").decode("latin-1"))
        target = request.target.decode("latin-1")
        self._request_id = rid = request_id(self.rt.forwarding, headers, self.conn.client_host)
        record: dict[str, Any] = {
            "client": self.conn.client_host, "listener": self.rt.listener, "method": request.method.decode(),
            "target": target, "host": host, "http_version": request.http_version.decode(),
            "request_id": rid, "user_agent": _header(headers, b"user-agent").decode("latin-1"),
            **self.conn.tls,
        }
        try:
            line = check_request_line(request.method, request.target, request.http_version, _header(headers, b"host"))
            if line.absolute:
                # routed by the target's authority, forwarded in origin-form with it as Host
                headers = [(n, v) for n, v in headers if n != b"host"] + [(b"host", line.authority)]
                request = h11.Request(method=request.method, target=line.target, headers=headers,
                                      http_version=request.http_version)
                host = record["host"] = normalise_host(line.authority.decode("latin-1"))
        except RequestLineError as exc:
            return await self._send_error(exc.status, exc.message, record, started, exc.headers)
        except h11.LocalProtocolError as exc:  # an authority that is no valid Host value
            return await self._send_error(400, f"bad absolute-form target: {exc}", record, started)
        # h11 enforces max_incomplete_event_size only while a head is incomplete;
        # a whole oversized head that arrived in one read is caught here.
        head_bytes = len(request.target) + 16 + sum(len(n) + len(v) + 4 for n, v in headers)
        if head_bytes > self.limits.max_header_bytes:
            return await self._send_error(431, "request header fields too large", record, started)
        length = _header(headers, b"content-length")
        if length and int(length) > self.limits.max_body_bytes:
            return await self._send_error(413, "request body too large", record, started)
        route = self.rt.router.match(host, line.path)
        if route is None:
            return await self._send_error(404, "no route", record, started)
        pool, upstream = await acquire_upstream(self.rt, self.conn, self.observer, route.upstream, record)
        if upstream is None:
            return await self._send_error(502, "upstream unavailable", record, started)
        return await self._exchange(request, headers, pool, upstream, record, started)

    # ---------------------------------------------------------------- one exchange

    def _upstream_request(self, request: h11.Request, headers: list[tuple[bytes, bytes]],
                          upstream_server: object) -> h11.Request:
        return upstream_request(request.method, request.target, headers, self.conn.client_host,
                                self.rt.forwarding, upstream_server, upgrade=_upgrade_offer(headers),
                                request_id=self._request_id)

    async def _exchange(self, request: h11.Request, headers: list[tuple[bytes, bytes]], pool: UpstreamPool,
                        upstream: UpstreamConn, record: dict[str, Any], started: float) -> bool:
        state: dict[str, Exception | None] = {"body": None, "relay": None}
        try:
            await _send_upstream(upstream, self._upstream_request(request, headers, upstream.server), pool.name,
                                 pool.config.read_timeout_s)
        except UpstreamError as exc:
            await _close(upstream.stream)
            self.observer.upstream_error(pool.name, exc.kind)
            record["error"] = str(exc)
            if isinstance(exc, UpstreamTimeout):
                return await self._send_error(504, _REASONS[504], record, started)
            return await self._send_error(502, "upstream failed", record, started)
        sent_at, self._upstream_head_at = time.monotonic(), 0.0
        status = 0
        length = _header(headers, b"content-length")
        if not _header(headers, b"transfer-encoding") and length in (b"", b"0"):
            # No body (RFC 9112 §6.3): h11 yields EndOfMessage without I/O, so the
            # common GET needs no pump task; relay in this task.
            try:
                await self._pump_request_body(upstream, pool)
                status = await self._relay_response(upstream, pool.config.read_timeout_s, pool.name)
            except (UpstreamError, h11.RemoteProtocolError, _ClientGone) as exc:
                state["relay"] = exc
        else:
            status = await self._exchange_with_body(upstream, pool, state)
        if self._upstream_head_at:
            record["upstream_response_s"] = round(self._upstream_head_at - sent_at, 6)
        if status == 101 and state["relay"] is None and state["body"] is None:
            await self._tunnel(upstream, record, started)
            return False
        body_err, relay_err = state["body"], state["relay"]
        err = relay_err or body_err
        seconds = time.monotonic() - started
        upstream_ok = status and relay_err is None and body_err is None and upstream.h11.our_state is h11.DONE
        if not (upstream_ok and pool.release(upstream)):
            await _close(upstream.stream)
        for e in (relay_err, body_err):
            if isinstance(e, UpstreamError):
                self.observer.upstream_error(pool.name, e.kind)
            elif isinstance(e, h11.RemoteProtocolError) and e is relay_err:
                self.observer.upstream_error(pool.name, "protocol")
        if err is not None:
            record["error"] = f"{type(err).__name__}: {err}"
        if self._sent_status is not None:
            record["status"] = self._sent_status
            self._log(record, seconds, response_complete=relay_err is None)
            return err is None
        fail = _fail_status(body_err, relay_err)
        if fail is None:
            record["status"] = 499  # client went away before any response: nginx's convention
            self._log(record, seconds)
            return False
        return await self._send_error(fail, _REASONS[fail], record, started)

    async def _exchange_with_body(self, upstream: UpstreamConn, pool: UpstreamPool,
                                  state: dict[str, Exception | None]) -> int:
        """Body pump and response relay as two tasks (see the module docstring);
        their failures land in ``state`` for ``_exchange`` to judge."""
        status, _ = await pump_and_relay(
            lambda: self._pump_request_body(upstream, pool),
            lambda: self._relay_response(upstream, pool.config.read_timeout_s, pool.name), state)
        return status

    async def _pump_request_body(self, upstream: UpstreamConn, pool: UpstreamPool) -> None:
        name, timeout_s = pool.name, pool.config.read_timeout_s
        total = 0
        if self.h11.they_are_waiting_for_100_continue:
            await self._send_client(h11.InformationalResponse(status_code=100, headers=[]))
        while True:
            event = await self._next_client_event(self.limits.body_timeout_s)
            if type(event) is h11.Data:
                total += len(event.data)
                if total > self.limits.max_body_bytes:
                    raise _BodyTooLarge(f"request body over {self.limits.max_body_bytes} bytes")
                await _send_upstream(upstream, h11.Data(data=event.data), name, timeout_s)
            elif type(event) is h11.EndOfMessage:
                await _send_upstream(upstream, _END_OF_MESSAGE, name, timeout_s)
                return
            else:
                raise _ClientGone(f"unexpected {type(event).__name__} in request body")

    async def _relay_response(self, upstream: UpstreamConn, read_timeout_s: float, name: str) -> int:
        while True:
            event = await _next_upstream_event(upstream, read_timeout_s, name)
            if type(event) is h11.InformationalResponse:
                if event.status_code == 101:
                    # h11 accepts a 101 only for an Upgrade we forwarded (else:
                    # RemoteProtocolError, a 502); both sides are now switched.
                    self._upstream_head_at = time.monotonic()
                    return await self._relay_switch(event, name)
                continue  # 100 Continue is ours to send
            if type(event) is h11.Response:
                break
            raise UpstreamClosed(name, "closed before a response")
        self._upstream_head_at = time.monotonic()
        headers = _strip_hop_by_hop(list(event.headers))
        headers = self.rt.forwarding.response_headers(headers, self._request_id)
        if self.conn.draining.is_set():
            headers.append((b"connection", b"close"))
        self._sent_status = event.status_code
        # _parsed=True: the upstream's head came out of h11's parser (see _upstream_request)
        self._queue_client(h11.Response(status_code=event.status_code, headers=headers, reason=event.reason,
                                        _parsed=True))
        try:
            while True:
                event = _upstream_event_nowait(upstream, name)
                if event is h11.NEED_DATA:
                    # about to wait on the upstream: the client gets what we have
                    await self._flush_client()
                    await _receive_upstream(upstream, read_timeout_s, name)
                elif type(event) is h11.Data:
                    # (the upstream's event as is: h11's writers read only .data)
                    self._queue_client(event)
                    if self._client_out_bytes >= READ_CHUNK_BYTES:
                        await self._flush_client()
                elif type(event) is h11.EndOfMessage:
                    self._queue_client(_END_OF_MESSAGE)  # (its trailers, if any, are not relayed)
                    await self._finish_response()
                    return self._sent_status
                else:
                    raise UpstreamClosed(name, "closed mid-response")
        except (UpstreamError, h11.RemoteProtocolError):
            # The head may be queued: the client gets what was relayed, then
            # the close tells it the response is cut short (as before queueing).
            with contextlib.suppress(_ClientGone):
                await self._flush_client()
            raise

    async def _relay_switch(self, event: h11.InformationalResponse, name: str) -> int:
        """Relay the upstream's 101; from here on the client connection is a byte stream."""
        headers = _strip_hop_by_hop(list(event.headers))
        headers += [(b"connection", b"upgrade"), (b"upgrade", _header(list(event.headers), b"upgrade"))]
        self._sent_status = 101
        try:
            self._queue_client(h11.InformationalResponse(status_code=101, headers=headers, reason=event.reason))
        except h11.LocalProtocolError as exc:  # the client's side of the switch is not pending
            raise UpstreamError(name, f"cannot relay 101: {exc}") from exc
        await self._flush_client()
        return 101

    async def _tunnel(self, upstream: UpstreamConn, record: dict[str, Any], started: float) -> None:
        """After a relayed 101: bytes both ways until a side closes or the session idles."""
        try:
            client_early, upstream_early = self.h11.trailing_data[0], upstream.h11.trailing_data[0]
            if client_early:
                await upstream.stream.send_all(client_early)
            if upstream_early:
                await self.stream.send_all(upstream_early)
            result, totals = await splice(self.stream, upstream.stream, self.limits.idle_timeout_s)
            record.update(tunnel=result, client_to_upstream=totals["a_to_b"] + len(client_early),
                          upstream_to_client=totals["b_to_a"] + len(upstream_early))
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            record.update(tunnel="broken", error=f"{type(exc).__name__}: {exc}")
        finally:
            await _close(upstream.stream)
        record["status"] = 101
        self._log(record, time.monotonic() - started)

    # ---------------------------------------------------------------- responses

    async def _send_error(self, status: int, message: str, record: dict[str, Any] | None, started: float,
                          extra_headers: tuple[tuple[bytes, bytes], ...] = ()) -> bool:
        """A short response generated here; the connection closes after it."""
        if record is None:
            record = {"client": self.conn.client_host, "listener": self.rt.listener}
        elif self.rt.forwarding.echo_request_id and self._request_id is not None:
            extra_headers += ((b"x-request-id", self._request_id.encode()),)
        record["status"] = status
        if self.h11.our_state in (h11.IDLE, h11.SEND_RESPONSE) and self._sent_status is None:
            body = f"{status} {_REASONS.get(status, 'Error')}: {message}\n".encode()
            try:
                self._queue_client(h11.Response(status_code=status, headers=[
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"), *extra_headers,
                ]))
                self._queue_client(h11.Data(data=body))
                self._queue_client(h11.EndOfMessage())
                await self._finish_response()
            except (_ClientGone, h11.LocalProtocolError):
                pass
        self._log(record, time.monotonic() - started)
        return False

    def _log(self, record: dict[str, Any], seconds: float, response_complete: bool = True) -> None:
        record["duration_s"] = round(seconds, 6)
        record["bytes_in"], record["bytes_out"] = self._bytes_in, self._bytes_out
        self._bytes_in = self._bytes_out = 0
        record.setdefault("status", 0)
        if not response_complete:
            record["aborted"] = True
        self.observer.request_done(record, seconds)


async def acquire_upstream(rt: HttpRuntime, conn: ConnState, observer: Observer, name: str,
                           record: dict[str, Any]) -> tuple[UpstreamPool, UpstreamConn | None]:
    """A connection from upstream pool ``name`` for one request (HTTP/1.1 and
    HTTP/2 alike), noted in the access ``record``; None (counted, noted) if
    the pool has none to give. The client's addresses go along: a
    ``send_proxy_protocol`` upstream's header names this client."""
    pool = rt.pools[name]
    record["upstream"] = name
    try:
        upstream = await pool.acquire((conn.client_host, conn.client_port), (conn.local_host, conn.local_port))
    except UpstreamError as exc:
        observer.upstream_error(pool.name, exc.kind)
        record["error"] = str(exc)
        return pool, None
    record["upstream_addr"] = str(upstream.server)
    record["upstream_reused"] = upstream.reused
    record["upstream_connect_s"] = 0.0 if upstream.reused else round(upstream.connect_s, 6)
    return pool, upstream


def upstream_request(method: bytes, target: bytes, headers: list[tuple[bytes, bytes]], client_host: str,
                     forwarding: Forwarding, upstream_server: object, *,
                     upgrade: bytes | None = None, request_id: str | None = None) -> h11.Request:
    """The HTTP/1.1 request head sent upstream for a client's request (HTTP/1.x or
    HTTP/2, whose ``:authority`` arrives here as ``host``): hop-by-hop fields
    removed, the forwarding fields as the listener's trust rules say
    (``forwarding``), the request's id as ``X-Request-Id``, an accepted
    ``upgrade`` offer (HTTP/1.1 WebSocket) kept."""
    chunked = b"chunked" in _header(headers, b"transfer-encoding").lower()
    out = [(n, v) for n, v in _strip_hop_by_hop(headers)
           if n not in FORWARDING_FIELDS and n != b"expect" and (n != b"via" or forwarding.via is None)]
    out += forwarding.request_headers(headers, client_host)
    if request_id is not None:
        out.append((b"x-request-id", request_id.encode()))
    if not _header(headers, b"host"):  # an HTTP/1.0 client may omit Host; HTTP/1.1 upstream requests need one
        out.append((b"host", _host_header(str(upstream_server))))
    if chunked:
        out.append((b"transfer-encoding", b"chunked"))
    if upgrade is not None:
        out += [(b"connection", b"upgrade"), (b"upgrade", upgrade)]
    # _parsed=True: every name and value here came out of h11's (or h2's) parser
    # (or is a constant, the client's IP address, or a value checked once by
    # _host_header), so h11 need not run its regexes over them again (a
    # third of its cost per request). h11 still checks framing and Host.
    return h11.Request(method=method, target=target, headers=out, http_version=b"1.1", _parsed=True)


async def pump_and_relay(pump: Callable[[], Awaitable[None]], relay: Callable[[], Awaitable[int | None]],
                         state: dict[str, Exception | None]) -> tuple[int | None, bool]:
    """Run a request body ``pump`` beside the response ``relay`` (HTTP/1.1 and
    HTTP/2 alike); returns (the relay's status or 0, whether the body was
    forwarded whole). Failures land in ``state["body"]`` / ``state["relay"]``.

    A client fault while pumping (gone, body too large, malformed) ends both:
    nothing sensible can reach the upstream any more. An upstream that stops
    reading ends only the pump: it may still have a response for us. A
    response that ends before the body (an early 413) ends the pump."""
    body_done = trio.Event()
    body_whole = False

    async def pump_body(cancel: trio.CancelScope) -> None:
        nonlocal body_whole
        try:
            await pump()
            body_whole = True
        except (_ClientGone, _BodyTooLarge, h11.RemoteProtocolError) as exc:
            state["body"] = exc
            cancel.cancel()
        except UpstreamError as exc:
            state["body"] = exc
        finally:
            body_done.set()

    status = 0
    with trio.CancelScope() as exchange_scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump_body, exchange_scope)
            try:
                status = await relay()
            except (UpstreamError, h11.RemoteProtocolError, _ClientGone) as exc:
                state["relay"] = exc
                nursery.cancel_scope.cancel()
            if not body_done.is_set():
                nursery.cancel_scope.cancel()  # answered before the body ended
    return status, body_whole


def _fail_status(body_err: Exception | None, relay_err: Exception | None) -> int | None:
    if isinstance(body_err, _BodyTooLarge):
        return 413
    if isinstance(body_err, h11.RemoteProtocolError):
        return 400
    if isinstance(body_err, _ClientGone) or isinstance(relay_err, _ClientGone):
        return None
    if isinstance(relay_err, UpstreamTimeout):
        return 504
    return 502


_REASONS = {400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout",
            413: "Content Too Large", 431: "Request Header Fields Too Large", 500: "Internal Server Error",
            502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout",
            505: "HTTP Version Not Supported"}


@functools.lru_cache(maxsize=64)
def _host_header(server: str) -> bytes:
    """``server`` as a Host value, checked by h11 once (it comes from the config)."""
    value = server.encode()
    h11.Request(method="GET", target="/", headers=[(b"host", value)])  # LocalProtocolError if invalid
    return value


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes:
    values = [v for n, v in headers if n == name]
    return b", ".join(values)


async def _send_upstream(upstream: UpstreamConn, event: Any, name: str, timeout_s: float) -> None:
    try:
        data = upstream.h11.send(event)
    except h11.LocalProtocolError as exc:
        raise UpstreamError(name, f"cannot forward: {exc}") from exc
    if data:
        # (a deadline scope only if the write has to wait: _sockstream)
        try:
            await upstream.stream.send_all_within(data, timeout_s)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise UpstreamClosed(name, f"write failed: {exc}") from exc
        except trio.TooSlowError:
            raise UpstreamTimeout(name, f"upstream took no request bytes within {timeout_s}s") from None


def _upstream_event_nowait(upstream: UpstreamConn, name: str) -> Any:
    """The upstream's next h11 event from what is buffered (``h11.NEED_DATA`` if none)."""
    try:
        return upstream.h11.next_event()
    except h11.RemoteProtocolError as exc:
        raise UpstreamError(name, f"bad response: {exc}") from exc


async def _receive_upstream(upstream: UpstreamConn, read_timeout_s: float, name: str) -> None:
    try:
        data = await upstream.stream.receive_some_within(READ_CHUNK_BYTES, read_timeout_s)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
        raise UpstreamClosed(name, f"read failed: {exc}") from exc
    except trio.TooSlowError:
        raise UpstreamTimeout(name, f"no response data within {read_timeout_s}s") from None
    upstream.h11.receive_data(data)


async def _next_upstream_event(upstream: UpstreamConn, read_timeout_s: float, name: str) -> Any:
    while True:
        event = _upstream_event_nowait(upstream, name)
        if event is not h11.NEED_DATA:
            return event
        await _receive_upstream(upstream, read_timeout_s, name)


async def _close(stream: trio.abc.AsyncResource) -> None:
    with trio.CancelScope(shield=True):
        try:
            await stream.aclose()
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass

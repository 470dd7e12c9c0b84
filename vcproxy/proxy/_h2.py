"""HTTP/2 to clients: one ``h2`` server connection per TLS connection (ALPN ``h2``).

Theory of operation. ``H2ProxyConnection`` owns the sans-IO ``h2.H2Connection``
and three kinds of tasks:

- the *reader* (``_read_loop``, the connection's own task) feeds client bytes
  to h2 and dispatches its events: a request head starts a stream task; DATA,
  trailers and END_STREAM land in that stream's ``_Stream`` inbox; a
  RST_STREAM cancels the stream task; WINDOW_UPDATE / SETTINGS wake the
  streams waiting for send window;
- one *stream task* per request (``_serve_stream``) proxies it to the route's
  upstream pool over HTTP/1.1 with the same pieces as ``_http``: the request
  head from ``upstream_request`` (hop-by-hop removed, X-Forwarded-* set), the
  same upstream reads/writes/timeouts, the same failure -> status mapping
  (``_fail_status``). A request with a body runs a body pump beside the
  relay, as in ``_http``;
- ``_flush`` (called by any of them) sends what h2 queued, under one lock and
  ``limits.send_timeout_s``; a failed or stalled client write ends the
  connection.

Flow control both ways (RFC 9113 §5.2). Request bodies: a stream's DATA is
acknowledged (WINDOW_UPDATE) only once it was written upstream, so a slow
upstream holds back only its own stream's client, with at most
``http2.initial_window_size_bytes`` buffered per stream; the connection window
is that times ``max_concurrent_streams``, so one stalled stream cannot starve
the others. Responses: a stream task sends at most the peer's window and then
waits for a WINDOW_UPDATE before it reads the upstream again, so a client that
stops reading one stream stalls only that stream's upstream reads (bounded by
``limits.send_timeout_s``, then RST_STREAM(CANCEL)).

Abuse bounds (each answered with GOAWAY and the connection's end):

- rapid reset (CVE-2023-44487): client RST_STREAMs of streams we had not
  finished are counted in a sliding window (``http2.max_resets_per_window``
  per ``reset_window_s``) -> ENHANCE_YOUR_CALM;
- PING / SETTINGS / PRIORITY / empty-DATA floods: the same, with
  ``max_control_frames_per_window`` -> ENHANCE_YOUR_CALM;
- HPACK bombs: the decoder stops at ``max_header_list_size_bytes`` of decoded
  headers (set at once, not only once the client ACKs our SETTINGS) -> h2's
  ENHANCE_YOUR_CALM;
- CONTINUATION floods (CVE-2024-27316 class): h2 buffers at most 64
  CONTINUATION frames of a header block, each at most ``max_frame_size_bytes``
  (also enforced before the ACK) -> PROTOCOL_ERROR.

Drain (SIGTERM) and reload: GOAWAY(NO_ERROR) with the highest stream id we
took (RFC 9113 §6.8); streams up to it finish (the worker bounds that by
``limits.drain_timeout_s``), later ones are refused (REFUSED_STREAM), and the
connection closes when the last stream is done. h2's own ``close_connection``
would refuse to send anything after the GOAWAY, so this GOAWAY is framed here.
"""
from __future__ import annotations

import re
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import h11
import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import trio
from hyperframe.frame import GoAwayFrame

from ._http import (
    DRAIN_FIRST_REQUEST_WAIT_S,
    LINGER_UNREAD_BYTES,
    LINGER_UNREAD_S,
    READ_CHUNK_BYTES,
    _REASONS,
    ConnState,
    HttpRuntime,
    Observer,
    _BodyTooLarge,
    _ClientGone,
    _close,
    _fail_status,
    _header,
    _next_upstream_event,
    _receive_upstream,
    _send_upstream,
    _strip_hop_by_hop,
    _upstream_event_nowait,
    acquire_upstream,
    pump_and_relay,
    request_id,
    upstream_request,
)
from vcproxy import _log

from ._router import normalise_host
from ._upstream import UpstreamConn, UpstreamError, UpstreamPool, UpstreamTimeout

_CODES = h2.errors.ErrorCodes
#: RFC 9110 §5.6.2 token (methods, header names) and what a request target may
#: hold (RFC 9112 §3.2: no whitespace or controls). h2 already rejects CR, LF,
#: NUL and uppercase (RFC 9113 §8.2.1); these keep the HTTP/1.1 head we build
#: from the client's fields well-formed, since h11 does not re-check them.
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TARGET = re.compile(rb"[\x21-\x7e]+")


def _code_name(code: int) -> str:
    try:
        return _CODES(code).name
    except ValueError:
        return str(code)


class FloodMeter:
    """Events in a sliding window; sans-IO (the caller passes the clock)."""

    def __init__(self, limit: int, window_s: float) -> None:
        self.limit = limit
        self.window_s = window_s
        self._times: deque[float] = deque()

    def hit(self, now_s: float) -> bool:
        """Count one event at ``now_s``; True when the window now holds more than ``limit``."""
        times = self._times
        times.append(now_s)
        while times and times[0] <= now_s - self.window_s:
            times.popleft()
        return len(times) > self.limit


class _ConnectionGone(Exception):
    """The client connection is unusable (write failed or stalled)."""


@dataclass(eq=False)
class _Stream:
    """One request stream as the reader and its stream task share it."""

    id: int
    headers: list[tuple[bytes, bytes]]
    body: deque[tuple[bytes, int]] = field(default_factory=deque)  # (data, flow-controlled length)
    body_ended: bool = False
    #: END_STREAM came on the request head: no body at all. (Not ``body_ended``:
    #: the whole body may have arrived before the stream task first runs.)
    bodyless: bool = False
    body_closed: bool = False  # we stopped reading the body: acknowledge and drop what comes
    trailers: list[tuple[bytes, bytes]] = field(default_factory=list)
    readable: trio.Event = field(default_factory=trio.Event)
    writable: trio.Event = field(default_factory=trio.Event)
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    was_reset: bool = False  # RST_STREAM received, or h2 reset it itself
    logged: bool = False
    status: int | None = None  # the response head we sent
    finished: bool = False  # we sent END_STREAM (or RST_STREAM)
    request_id: str | None = None
    upstream_head_at: float = 0.0  # when the response head arrived from upstream
    bytes_in: int = 0  # DATA payload bytes received / sent (the access record's bytes_in/out)
    bytes_out: int = 0


class H2ProxyConnection:
    def __init__(self, stream: trio.abc.Stream, conn: ConnState, runtime: HttpRuntime,
                 observer: Observer) -> None:
        self.stream = stream
        self.conn = conn
        self.rt = runtime
        self.limits = runtime.config.limits
        self.settings = s = runtime.config.http2
        self.observer = observer
        # Outbound fields are not re-validated: they are h11's parse of the
        # upstream's head (lowercase tokens, no CR/LF/NUL) minus the hop-by-hop
        # ones HTTP/2 forbids (RFC 9113 §8.2.2), or our own constants.
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=False, header_encoding=None, validate_inbound_headers=True,
            validate_outbound_headers=False, normalize_outbound_headers=False))
        codes = h2.settings.SettingCodes
        self.h2.local_settings = h2.settings.Settings(client=False, initial_values={
            codes.MAX_CONCURRENT_STREAMS: s.max_concurrent_streams,
            codes.MAX_HEADER_LIST_SIZE: s.max_header_list_size_bytes,
            codes.INITIAL_WINDOW_SIZE: s.initial_window_size_bytes,
            codes.MAX_FRAME_SIZE: s.max_frame_size_bytes,
        })
        # In force from the first byte, not from the client's SETTINGS ACK
        # (h2 would allow 16 MiB frames and 64 KiB header lists until then).
        self.h2.max_inbound_frame_size = s.max_frame_size_bytes
        self.h2.decoder.max_header_list_size = s.max_header_list_size_bytes
        self.streams: dict[int, _Stream] = {}
        self._resets = FloodMeter(s.max_resets_per_window, s.reset_window_s)
        self._control = FloodMeter(s.max_control_frames_per_window, s.reset_window_s)
        self._send_lock = trio.Lock()
        self._out_prefix = bytearray()  # our own GOAWAY, ahead of what h2 queues next
        self._unflushed_bytes = 0
        self._goaway_last_id: int | None = None
        self._first_stream = trio.Event()
        self._read_scope: trio.CancelScope | None = None
        self._idle_since = time.monotonic()
        self._woken = False
        self._scope = trio.CancelScope()
        self._linger = False  # a GOAWAY for a fault went out: drop what follows before closing

    # ---------------------------------------------------------------- client I/O

    async def _flush(self) -> None:
        async with self._send_lock:
            data = self._out_prefix + self.h2.data_to_send()
            self._out_prefix.clear()
            self._unflushed_bytes = 0
            if not data:
                return
            timeout_s = self.limits.send_timeout_s
            try:
                with trio.CancelScope(deadline=trio.current_time() + timeout_s) as scope:
                    await self.stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                self._scope.cancel()
                raise _ConnectionGone(f"client write failed: {exc}") from exc
            if scope.cancelled_caught:
                self._scope.cancel()
                raise _ConnectionGone(f"client took no bytes within {timeout_s}s")

    def _wake_reader(self) -> None:
        """Tell the reader the last stream ended or our GOAWAY is out.

        With no stream left its pending read takes the idle deadline and
        becomes the connection's idle scope by moving the scope's deadline, not
        by cancelling the read: a TLSStream read cancelled while it opens
        records (a vcrypto provider round trip) breaks the TLS stream, which
        silently ended the connection under the client's next request. Only a
        drained connection (GOAWAY out, no stream left) has its read cancelled:
        it ends anyway. A GOAWAY with streams still open needs no wake: the
        last of them wakes the reader. (``_woken`` tells that cancel apart
        from an idle timeout or a shed.)"""
        scope = self._read_scope
        if scope is None or self.streams:
            return  # between reads the loop re-checks by itself; streams: no deadline
        if self._goaway_last_id is not None:
            self._woken = True
            scope.cancel()
            return
        scope.deadline = self._read_deadline()
        self.conn.idle_scope = scope

    # ---------------------------------------------------------------- connection

    async def serve(self) -> None:
        with self._scope:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._watch_drain)
                try:
                    self.h2.initiate_connection()
                    extra = self.settings.initial_window_size_bytes * self.settings.max_concurrent_streams - 65535
                    if extra > 0:
                        self.h2.increment_flow_control_window(min(extra, 2**31 - 1 - 65535))
                    await self._flush()
                    await self._read_loop()
                except _ConnectionGone:
                    pass
                # Cancel the streams before the last flush: none may touch h2 after its GOAWAY.
                nursery.cancel_scope.cancel()
                with trio.CancelScope(shield=True):
                    try:
                        await self._flush()
                    except _ConnectionGone:
                        return
        if self._linger:
            await self._drop_unread()

    async def _drop_unread(self) -> None:
        """After a GOAWAY for a fault, read and drop what the client still sends
        (bounded) before closing: closing with unread bytes makes the kernel
        send a reset, which can destroy the GOAWAY before the client reads it
        (RFC 9113 §6.8: the sender of a GOAWAY keeps reading; as _http does
        after an early 413)."""
        with trio.move_on_after(LINGER_UNREAD_S):
            dropped = 0
            while dropped < LINGER_UNREAD_BYTES:
                try:
                    data = await self.stream.receive_some(READ_CHUNK_BYTES)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    return
                if not data:
                    return
                dropped += len(data)

    def _read_deadline(self) -> float:
        if self.streams:
            return float("inf")  # each stream's own timeouts apply
        idle_s = self.limits.idle_timeout_s
        if self.h2.highest_inbound_stream_id == 0:
            idle_s = min(idle_s, self.limits.header_timeout_s)  # the preface and a first request
        return trio.current_time() + idle_s - (time.monotonic() - self._idle_since)

    async def _read_loop(self) -> None:
        while True:
            if self._goaway_last_id is not None and not self.streams:
                return  # drained
            try:
                with trio.CancelScope(deadline=self._read_deadline()) as scope:
                    self._read_scope = scope
                    # With no stream open the connection is idle: the slot
                    # shedder (and a drain) may end it by cancelling this read.
                    self.conn.idle_scope = None if self.streams else scope
                    data = await self.stream.receive_some(READ_CHUNK_BYTES)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                return
            finally:
                self._read_scope = None
                self.conn.idle_scope = None
            if scope.cancelled_caught:
                if self._woken or self.streams or self._goaway_last_id is not None:
                    self._woken = False
                    continue  # woken: re-check
                self.h2.close_connection(_CODES.NO_ERROR)  # idle, or shed for a new client
                return
            if not data:
                return
            try:
                events = self.h2.receive_data(data)
            except h2.exceptions.ProtocolError as exc:
                # h2 queued the GOAWAY with its code; serve() flushes it.
                log = _log.error_log.warning if isinstance(exc, h2.exceptions.DenialOfServiceError) \
                    else _log.error_log.debug
                log("http2_goaway", listener=self.rt.listener, client=self.conn.client_host,
                    code=_code_name(exc.error_code), reason=str(exc))
                self._linger = True
                return
            for event in events:
                if not self._dispatch(event):
                    return
            await self._flush()

    def _dispatch(self, event: Any) -> bool:
        """Handle one h2 event; False ends the connection (a GOAWAY is queued)."""
        E = h2.events
        now = time.monotonic()
        if isinstance(event, E.RequestReceived):
            return self._start_stream(event)
        if isinstance(event, E.DataReceived):
            st = self.streams.get(event.stream_id)
            if not event.data and not event.stream_ended and self._control.hit(now):
                return self._calm("empty DATA flood")
            if st is None or st.body_closed:
                if event.flow_controlled_length:
                    self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            else:
                st.body.append((event.data, event.flow_controlled_length))
                st.bytes_in += len(event.data)
                st.readable.set()
        elif isinstance(event, E.TrailersReceived):
            st = self.streams.get(event.stream_id)
            if st is not None:
                st.trailers = list(event.headers)
        elif isinstance(event, E.StreamEnded):
            st = self.streams.get(event.stream_id)
            if st is not None:
                st.body_ended = True
                st.readable.set()
        elif isinstance(event, E.StreamReset):
            # The client's RST_STREAM, or h2's own for a stream-level fault
            # (a body longer than its content-length, say): the stream is over.
            st = self.streams.get(event.stream_id)
            if st is not None:
                st.was_reset = True
                st.scope.cancel()
                if event.remote_reset and not st.finished and self._resets.hit(now):
                    return self._calm("rapid reset")
        elif isinstance(event, E.WindowUpdated):
            if event.stream_id == 0:
                for st in self.streams.values():
                    st.writable.set()
            else:
                st = self.streams.get(event.stream_id)
                if st is not None:
                    st.writable.set()
        elif isinstance(event, E.RemoteSettingsChanged):
            if self._control.hit(now):
                return self._calm("SETTINGS flood")
            for st in self.streams.values():  # INITIAL_WINDOW_SIZE may have grown
                st.writable.set()
        elif isinstance(event, (E.PingReceived, E.PriorityUpdated)):
            if self._control.hit(now):
                return self._calm(f"{type(event).__name__} flood")
        elif isinstance(event, E.ConnectionTerminated):
            # The client's GOAWAY: it opens no more streams. NO_ERROR lets the
            # open ones finish; anything else means it gave up on them.
            if event.error_code != _CODES.NO_ERROR or not self.streams:
                return False
            self._goaway_last_id = self.h2.highest_inbound_stream_id
        return True

    def _calm(self, why: str) -> bool:
        _log.error_log.warning("http2_goaway", listener=self.rt.listener, client=self.conn.client_host,
                               code="ENHANCE_YOUR_CALM", reason=why)
        self.h2.close_connection(_CODES.ENHANCE_YOUR_CALM, additional_data=why.encode())
        self._linger = True
        return False

    def _start_stream(self, event: h2.events.RequestReceived) -> bool:
        sid = event.stream_id
        if self._goaway_last_id is not None and sid > self._goaway_last_id:
            # RFC 9113 §6.8: after our GOAWAY, later streams are not processed.
            self.h2.reset_stream(sid, _CODES.REFUSED_STREAM)
            return True
        st = _Stream(sid, list(event.headers), body_ended=event.stream_ended, bodyless=event.stream_ended)
        self.streams[sid] = st
        self.conn.requests += 1
        self._first_stream.set()
        self._nursery.start_soon(self._serve_stream, st)
        return True

    def _stream_done(self, st: _Stream) -> None:
        self.streams.pop(st.id, None)
        if st.body:  # give the connection window back for what we never forwarded
            n = sum(flow for _, flow in st.body)
            st.body.clear()
            if n:
                try:
                    self.h2.acknowledge_received_data(n, st.id)
                except h2.exceptions.ProtocolError:
                    pass  # the connection is closing
        st.body_closed = True
        if not self.streams:
            self._idle_since = time.monotonic()
            self._wake_reader()  # its read now has the idle deadline (and is the idle scope)

    # ---------------------------------------------------------------- drain / reload

    async def _watch_drain(self) -> None:
        async with trio.open_nursery() as nursery:
            async def wait(event: trio.Event) -> None:
                await event.wait()
                nursery.cancel_scope.cancel()
            nursery.start_soon(wait, self.conn.draining)
            nursery.start_soon(wait, self.rt.retired)
        if self.h2.highest_inbound_stream_id == 0:
            # Accepted just before the drain: its first request may be on the way.
            with trio.move_on_after(DRAIN_FIRST_REQUEST_WAIT_S):
                await self._first_stream.wait()
        self._goaway(_CODES.NO_ERROR)
        try:
            await self._flush()
        except _ConnectionGone:
            return
        self._wake_reader()

    def _goaway(self, code: int) -> None:
        last = self.h2.highest_inbound_stream_id
        self._goaway_last_id = last
        frame = GoAwayFrame(0)
        frame.last_stream_id = last
        frame.error_code = code
        self._out_prefix += self.h2.data_to_send() + frame.serialize()

    # ---------------------------------------------------------------- one stream

    async def _serve_stream(self, st: _Stream) -> None:
        started = time.monotonic()
        record: dict[str, Any] = {"client": self.conn.client_host, "listener": self.rt.listener,
                                  "http_version": "2", "stream": st.id, **self.conn.tls}
        try:
            with st.scope:
                await self._proxy(st, record, started)
        except* (_ConnectionGone, h2.exceptions.ProtocolError) as group:
            # The connection died under the stream, or h2 closed the stream
            # between two of our calls (except*: nurseries wrap what they raise).
            record.setdefault("error", f"{type(group.exceptions[0]).__name__}: {group.exceptions[0]}")
        finally:
            self._stream_done(st)
            if not st.logged:  # reset by the client, or the connection ended under it
                record["status"] = st.status or 499
                if st.status is not None:
                    record["aborted"] = True
                if st.was_reset:
                    record.setdefault("error", "stream reset")
                self._log(st, record, started)

    async def _proxy(self, st: _Stream, record: dict[str, Any], started: float) -> None:
        pseudo: dict[bytes, bytes] = {}
        headers: list[tuple[bytes, bytes]] = []
        cookies: list[bytes] = []
        for name, value in st.headers:
            if name.startswith(b":"):
                pseudo[name] = value
            elif name == b"cookie":
                cookies.append(value)
            else:
                headers.append((name, value))
        if cookies:  # RFC 9113 §8.2.3: one Cookie field for HTTP/1.1
            headers.append((b"cookie", b"; ".join(cookies)))
        method = pseudo.get(b":method", b"")
        target = pseudo.get(b":path", b"")
        authority = pseudo.get(b":authority")
        if authority is not None:  # RFC 9113 §8.3.1: :authority in place of Host
            headers = [(n, v) for n, v in headers if n != b"host"] + [(b"host", authority)]
        host = normalise_host(_header(headers, b"host").decode("latin-1"))
        st.request_id = request_id(self.rt.forwarding, headers, self.conn.client_host)
        record.update(method=method.decode("latin-1"), target=target.decode("latin-1"), host=host,
                      request_id=st.request_id, user_agent=_header(headers, b"user-agent").decode("latin-1"))
        if method == b"CONNECT":
            return await self._respond_error(st, 405, "CONNECT is not supported", record, started)
        if (not _TOKEN.fullmatch(method) or not _TARGET.fullmatch(target)
                or not all(_TOKEN.fullmatch(n) for n, _ in headers)):
            return await self._respond_error(st, 400, "malformed request", record, started)
        # RFC 9113 §8.3.1: an http(s) :path is origin-form, or "*" for OPTIONS;
        # the authority is :authority's (absolute-form has no place here: an
        # upstream would route by it and ignore Host, RFC 9112 §3.2.2).
        if not (target.startswith(b"/") or (target == b"*" and method == b"OPTIONS")):
            return await self._respond_error(st, 400, ":path must be '/...' (or '*' for OPTIONS)",
                                             record, started)
        length = _header(headers, b"content-length")
        if length and not length.isdigit() or st.bodyless and length not in (b"", b"0"):
            # RFC 9113 §8.1.1: a content-length that the DATA frames (none
            # here) do not add up to makes the request malformed.
            return await self._respond_error(st, 400, "content-length does not match the body", record, started)
        if length and int(length) > self.limits.max_body_bytes:
            return await self._respond_error(st, 413, _REASONS[413], record, started)
        route = self.rt.router.match(host, target.decode("latin-1").split("?", 1)[0])
        if route is None:
            return await self._respond_error(st, 404, "no route", record, started)
        pool, upstream = await acquire_upstream(self.rt, self.conn, self.observer, route.upstream, record)
        if upstream is None:
            return await self._respond_error(st, 502, "upstream unavailable", record, started)
        released = False
        try:
            released = await self._exchange(st, method, target, headers, pool, upstream, record, started)
        finally:
            if not released:
                await _close(upstream.stream)

    async def _exchange(self, st: _Stream, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]],
                        pool: UpstreamPool, upstream: UpstreamConn, record: dict[str, Any], started: float) -> bool:
        """Proxy the stream over ``upstream``; returns whether it went back to the pool."""
        has_body = not st.bodyless
        chunked = has_body and not _header(headers, b"content-length")
        if chunked:  # HTTP/2 bodies have no length of their own (RFC 9113 §8.1)
            headers = headers + [(b"transfer-encoding", b"chunked")]
        head = upstream_request(method, target, headers, self.conn.client_host, self.rt.forwarding,
                                upstream.server, request_id=st.request_id)
        timeout_s = pool.config.read_timeout_s
        try:
            await _send_upstream(upstream, head, pool.name, timeout_s)
        except UpstreamError as exc:
            self.observer.upstream_error(pool.name, exc.kind)
            record["error"] = str(exc)
            status = 504 if isinstance(exc, UpstreamTimeout) else 502
            await self._respond_error(st, status, _REASONS[status], record, started)
            return False
        sent_at = time.monotonic()
        state: dict[str, Exception | None] = {"body": None, "relay": None}
        if not has_body:
            try:
                await _send_upstream(upstream, h11.EndOfMessage(), pool.name, timeout_s)
                await self._relay(st, upstream, pool)
            except (UpstreamError, h11.RemoteProtocolError, _ClientGone) as exc:
                state["relay"] = exc
        else:
            _, whole = await pump_and_relay(lambda: self._pump_body(st, upstream, pool, chunked),
                                            lambda: self._relay(st, upstream, pool), state)
            if not whole:
                st.body_closed = True  # what the client still sends is acknowledged and dropped
        if st.upstream_head_at:
            record["upstream_response_s"] = round(st.upstream_head_at - sent_at, 6)
        body_err, relay_err = state["body"], state["relay"]
        for e in (relay_err, body_err):
            if isinstance(e, UpstreamError):
                self.observer.upstream_error(pool.name, e.kind)
            elif isinstance(e, h11.RemoteProtocolError) and e is relay_err:
                self.observer.upstream_error(pool.name, "protocol")
        err = relay_err or body_err
        if err is not None:
            record["error"] = f"{type(err).__name__}: {err}"
        if st.status is not None:
            record["status"] = st.status
            if err is not None and not st.finished:
                self._reset(st, _CODES.INTERNAL_ERROR)  # the only way to say "cut short" once the head is out
                record["aborted"] = True
            await self._flush()
            self._log(st, record, started)
            return err is None and upstream.h11.our_state is h11.DONE and pool.release(upstream)
        fail = _fail_status(body_err, relay_err)
        if fail is None:
            record["status"] = 499
            self._reset(st, _CODES.CANCEL)
            await self._flush()
            self._log(st, record, started)
            return False
        await self._respond_error(st, fail, _REASONS[fail], record, started)
        return False

    async def _pump_body(self, st: _Stream, upstream: UpstreamConn, pool: UpstreamPool, chunked: bool) -> None:
        name, timeout_s = pool.name, pool.config.read_timeout_s
        total = 0
        while True:
            if not st.body and not st.body_ended:
                st.readable = trio.Event()
                with trio.move_on_after(self.limits.body_timeout_s) as wait:
                    await st.readable.wait()
                if wait.cancelled_caught:
                    raise _ClientGone(f"no request body data within {self.limits.body_timeout_s}s")
                continue
            if st.body:
                data, flow = st.body.popleft()
                total += len(data)
                if total > self.limits.max_body_bytes:
                    raise _BodyTooLarge(f"request body over {self.limits.max_body_bytes} bytes")
                if data:
                    await _send_upstream(upstream, h11.Data(data=data), name, timeout_s)
                if flow:  # forwarded: the client may send that much more
                    self.h2.acknowledge_received_data(flow, st.id)
                    await self._flush()
                continue
            # Trailers ride on the last chunk when the body is chunked (RFC 9112 §7.1.2);
            # a Content-Length body has nowhere to carry them.
            trailers = [(n, v) for n, v in st.trailers if not n.startswith(b":")] if chunked else []
            await _send_upstream(upstream, h11.EndOfMessage(headers=_strip_hop_by_hop(trailers)), name, timeout_s)
            return

    async def _relay(self, st: _Stream, upstream: UpstreamConn, pool: UpstreamPool) -> None:
        name, timeout_s = pool.name, pool.config.read_timeout_s
        while True:
            event = await _next_upstream_event(upstream, timeout_s, name)
            if isinstance(event, h11.InformationalResponse):
                continue  # HTTP/2 has no 100-continue handshake to relay; the body flows anyway
            if isinstance(event, h11.Response):
                break
            raise UpstreamError(name, "closed before a response")
        st.upstream_head_at = time.monotonic()
        out = [(b":status", str(event.status_code).encode())]
        out += self.rt.forwarding.response_headers(_strip_hop_by_hop(list(event.headers)), st.request_id)
        nxt = _upstream_event_nowait(upstream, name)
        bodyless = isinstance(nxt, h11.EndOfMessage) and not nxt.headers
        try:
            self.h2.send_headers(st.id, out, end_stream=bodyless)
        except h2.exceptions.StreamClosedError as exc:
            raise _ClientGone(f"stream {st.id} closed") from exc
        except h2.exceptions.ProtocolError as exc:
            raise UpstreamError(name, f"response head not valid in HTTP/2: {exc}") from exc
        st.status = event.status_code
        if bodyless:
            st.finished = True
            await self._finish_stream(st)
            return
        while True:
            if nxt is h11.NEED_DATA:
                await self._flush()  # about to wait on the upstream: the client gets what we have
                await _receive_upstream(upstream, timeout_s, name)
            elif isinstance(nxt, h11.Data):
                data = nxt.data
                nxt = _upstream_event_nowait(upstream, name)
                if isinstance(nxt, h11.EndOfMessage) and not nxt.headers:
                    await self._send_data(st, data, end_stream=True)  # END_STREAM on the last DATA frame
                    st.finished = True
                    await self._finish_stream(st)
                    return
                await self._send_data(st, data)
                continue
            elif isinstance(nxt, h11.EndOfMessage):
                trailers = _strip_hop_by_hop(list(nxt.headers))
                if trailers:
                    self.h2.send_headers(st.id, trailers, end_stream=True)
                else:
                    self.h2.end_stream(st.id)
                st.finished = True
                await self._finish_stream(st)
                return
            else:
                raise UpstreamError(name, "closed mid-response")
            nxt = _upstream_event_nowait(upstream, name)

    async def _finish_stream(self, st: _Stream) -> None:
        if not st.body_ended:
            # RFC 9113 §8.1: a complete response before the whole request; the
            # client is told to stop sending with RST_STREAM(NO_ERROR).
            st.body_closed = True
            self._reset(st, _CODES.NO_ERROR)
        await self._flush()

    async def _send_data(self, st: _Stream, data: bytes, end_stream: bool = False) -> None:
        """``data`` as DATA frames within the client's windows (RFC 9113 §6.9);
        ``end_stream`` sets END_STREAM on the last one."""
        view = memoryview(data)
        if not view and end_stream:
            self.h2.end_stream(st.id)
        while view:
            window = min(self._window(st), self.h2.max_outbound_frame_size)
            if window <= 0:
                st.writable = trio.Event()
                await self._flush()
                timeout_s = self.limits.send_timeout_s
                with trio.move_on_after(timeout_s) as wait:
                    while self._window(st) <= 0:
                        await st.writable.wait()
                        st.writable = trio.Event()
                if wait.cancelled_caught:
                    raise _ClientGone(f"stream {st.id}: no flow-control window within {timeout_s}s")
                continue
            n = min(window, len(view))
            self.h2.send_data(st.id, bytes(view[:n]), end_stream=end_stream and n == len(view))
            st.bytes_out += n
            view = view[n:]
            self._unflushed_bytes += n
            if self._unflushed_bytes >= READ_CHUNK_BYTES:
                await self._flush()

    def _window(self, st: _Stream) -> int:
        try:
            return self.h2.local_flow_control_window(st.id)
        except h2.exceptions.ProtocolError as exc:
            raise _ClientGone(f"stream {st.id} closed") from exc

    def _reset(self, st: _Stream, code: int) -> None:
        if st.was_reset:
            return
        try:
            self.h2.reset_stream(st.id, code)
        except h2.exceptions.ProtocolError:
            pass  # already closed (the client's END_STREAM crossed ours), or the connection is
        st.finished = True

    async def _respond_error(self, st: _Stream, status: int, message: str, record: dict[str, Any],
                             started: float) -> None:
        record["status"] = status
        body = f"{status} {_REASONS.get(status, 'Error')}: {message}\n".encode()
        if st.status is None:
            st.status = status
            head = [(b":status", str(status).encode()), (b"content-type", b"text/plain; charset=utf-8"),
                    (b"content-length", str(len(body)).encode())]
            if self.rt.forwarding.echo_request_id and st.request_id is not None:
                head.append((b"x-request-id", st.request_id.encode()))
            self.h2.send_headers(st.id, head)
            try:
                await self._send_data(st, body, end_stream=True)
                st.finished = True
                await self._finish_stream(st)
            except _ClientGone:
                record["aborted"] = True
        self._log(st, record, started)

    def _log(self, st: _Stream, record: dict[str, Any], started: float) -> None:
        st.logged = True
        seconds = time.monotonic() - started
        record["duration_s"] = round(seconds, 6)
        record["bytes_in"], record["bytes_out"] = st.bytes_in, st.bytes_out
        record.setdefault("status", 0)
        self.observer.request_done(record, seconds)

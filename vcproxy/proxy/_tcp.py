"""TCP mode: after the TLS handshake, pump bytes both ways to one upstream server.

Each direction is its own task; a client EOF is passed on as a write-side
shutdown to the upstream (so request/response protocols that rely on
half-close work), an upstream EOF ends the session. A session with no bytes
in either direction for ``limits.idle_timeout_s`` is closed: the watchdog
looks at one shared activity clock, since a long one-way download leaves the
other direction legitimately silent. A drain cannot end a byte stream at a
request boundary, so tcp sessions run until they end or the drain deadline.
"""
from __future__ import annotations

import time
from typing import Any

import trio

from ._http import ConnState, _close
from ._upstream import UpstreamError, UpstreamPool

PUMP_CHUNK_BYTES = 256 * 1024


async def serve_tcp(stream: trio.abc.Stream, conn: ConnState, pool: UpstreamPool, idle_timeout_s: float,
                    listener: str, observer: Any) -> None:
    started = time.monotonic()
    record: dict[str, Any] = {"client": conn.client_host, "listener": listener, "mode": "tcp", "upstream": pool.name}
    try:
        upstream = await pool.connect()
    except UpstreamError as exc:
        observer.upstream_error(pool.name, exc.kind)
        record.update(result="upstream_error", error=str(exc), duration_s=round(time.monotonic() - started, 6))
        observer.tcp_done(record)
        return
    last_activity = [time.monotonic()]
    totals = {"client_to_upstream": 0, "upstream_to_client": 0}

    async def pump(src: trio.abc.Stream, dst: trio.abc.Stream, key: str, half_close: bool) -> None:
        try:
            while True:
                data = await src.receive_some(PUMP_CHUNK_BYTES)
                if not data:
                    break
                last_activity[0] = time.monotonic()
                totals[key] += len(data)
                await dst.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        if half_close and hasattr(dst, "send_eof"):
            try:
                await dst.send_eof()
                return
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass
        nursery.cancel_scope.cancel()

    result = "ok"
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pump, stream, upstream.stream, "client_to_upstream", True)
        nursery.start_soon(pump, upstream.stream, stream, "upstream_to_client", False)
        while True:
            await trio.sleep(min(1.0, idle_timeout_s / 4))
            if time.monotonic() - last_activity[0] > idle_timeout_s:
                result = "idle_timeout"
                nursery.cancel_scope.cancel()
                break
    await _close(upstream.stream)
    record.update(totals, result=result, duration_s=round(time.monotonic() - started, 6))
    observer.tcp_done(record)

"""TCP mode: after the TLS handshake, pump bytes both ways to one upstream server.

The pump is ``_splice.splice`` (half-close passed on, one idle clock for
both directions, ``limits.idle_timeout_s``). A drain cannot end a byte
stream at a request boundary, so tcp sessions run until they end or the
drain deadline.
"""
from __future__ import annotations

import time
from typing import Any

import trio

from ._http import ConnState, _close
from ._splice import splice
from ._upstream import UpstreamError, UpstreamPool


async def serve_tcp(stream: trio.abc.Stream, conn: ConnState, pool: UpstreamPool, idle_timeout_s: float,
                    listener: str, observer: Any) -> None:
    started = time.monotonic()
    record: dict[str, Any] = {"client": conn.client_host, "listener": listener, "mode": "tcp", "upstream": pool.name,
                              **conn.tls}
    try:
        upstream = await pool.connect(None, (conn.client_host, conn.client_port), (conn.local_host, conn.local_port))
    except UpstreamError as exc:
        observer.upstream_error(pool.name, exc.kind)
        record.update(result="upstream_error", error=str(exc), duration_s=round(time.monotonic() - started, 6))
        observer.tcp_done(record)
        return
    result, totals = await splice(stream, upstream.stream, idle_timeout_s)
    await _close(upstream.stream)
    record.update(client_to_upstream=totals["a_to_b"], upstream_to_client=totals["b_to_a"],
                  result=result, duration_s=round(time.monotonic() - started, 6))
    observer.tcp_done(record)

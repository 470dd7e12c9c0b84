"""A bidirectional byte pump between two streams, with an idle timeout.

Used by tcp mode (after the TLS handshake) and by HTTP/1.1 upgrades (after
the upstream answered ``101 Switching Protocols``): from then on neither side
is HTTP any more, only bytes.

Each direction is its own task; an EOF from the ``a`` side is passed on as a
write-side shutdown to ``b`` (so request/response protocols that rely on
half-close work), an EOF from ``b`` ends the session. A session with no bytes
in either direction for ``idle_timeout_s`` is closed: the watchdog looks at
one shared activity clock, since a long one-way download leaves the other
direction legitimately silent.
"""
from __future__ import annotations

import time

import trio

PUMP_CHUNK_BYTES = 256 * 1024


async def splice(a: trio.abc.Stream, b: trio.abc.Stream, idle_timeout_s: float) -> tuple[str, dict[str, int]]:
    """Pump until one side ends or the session idles; returns ``(result, totals)``:
    result ``ok`` or ``idle_timeout``, totals by direction (``a_to_b``, ``b_to_a``).
    Neither stream is closed here: the caller owns both."""
    last_activity = [time.monotonic()]
    totals = {"a_to_b": 0, "b_to_a": 0}

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
        nursery.start_soon(pump, a, b, "a_to_b", True)
        nursery.start_soon(pump, b, a, "b_to_a", False)
        while True:
            await trio.sleep(min(1.0, idle_timeout_s / 4))
            if time.monotonic() - last_activity[0] > idle_timeout_s:
                result = "idle_timeout"
                nursery.cancel_scope.cancel()
                break
    return result, totals

"""Batched metric increments (vcproxy.proxy._counts): nothing is written before a
flush, and a flush writes exactly what direct inc()/observe() calls would have."""
from __future__ import annotations

import trio
from prometheus_client import CollectorRegistry, Counter, Histogram

from vcproxy.proxy._counts import FLUSH_INTERVAL_S, PendingCounts

BUCKETS = (0.001, 0.01, 0.1, 1.0)


def _samples(registry: CollectorRegistry, prefix: str) -> dict[tuple[str, tuple], float]:
    return {(s.name.removeprefix(prefix), tuple(sorted(s.labels.items()))): s.value
            for m in registry.collect() for s in m.samples if not s.name.endswith("_created")}


def _metrics(registry: CollectorRegistry, prefix: str):
    return (Counter(f"{prefix}ops", "ops", ["op"], registry=registry),
            Histogram(f"{prefix}seconds", "latency", ["listener"], buckets=BUCKETS, registry=registry))


def test_flush_writes_what_direct_calls_write():
    direct_reg, batched_reg = CollectorRegistry(), CollectorRegistry()
    d_ops, d_hist = _metrics(direct_reg, "d_")
    b_ops, b_hist = _metrics(batched_reg, "b_")
    pending = PendingCounts()
    amounts = [0.0005, 0.001, 0.0011, 0.05, 0.1, 0.7, 1.0, 3.0, 42.0, 0.0]
    for i, a in enumerate(amounts):
        for ops, hist, inc, observe in ((d_ops, d_hist, lambda c, n=1.0: c.inc(n), lambda c, v: c.observe(v)),
                                        (b_ops, b_hist, pending.inc, pending.observe)):
            inc(ops.labels("seal"))
            inc(ops.labels("open"), 3)
            observe(hist.labels("web" if i % 2 else "api"), a)
    pending.inc_final(b_ops.labels("request"))
    d_ops.labels("request").inc()
    before = _samples(batched_reg, "b_")
    assert all(v == 0 for (name, _), v in before.items() if not name.endswith("_created")), before
    pending.flush()
    assert _samples(batched_reg, "b_") == _samples(direct_reg, "d_")
    pending.flush()  # nothing pending: writes nothing more
    assert _samples(batched_reg, "b_") == _samples(direct_reg, "d_")


async def test_run_flushes_within_the_interval_and_at_cancel():
    registry = CollectorRegistry()
    ops, _ = _metrics(registry, "r_")
    pending = PendingCounts()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pending.run)
        pending.inc(ops.labels("seal"))
        with trio.fail_after(FLUSH_INTERVAL_S * 20):
            while ops.labels("seal")._value.get() != 1:
                await trio.sleep(FLUSH_INTERVAL_S / 5)
        pending.inc(ops.labels("seal"), 2)
        nursery.cancel_scope.cancel()
    assert ops.labels("seal")._value.get() == 3  # the last counts are written when the task ends


def test_a_gauge_gets_its_net_change_and_a_zero_net_writes_nothing():
    """connections_active is batched as +1/-1 per connection: the flush
    writes the net change, and connections that opened and closed within one
    interval write nothing."""
    from prometheus_client import Gauge

    registry = CollectorRegistry()
    gauge = Gauge("g_active", "open now", ["listener"], registry=registry)
    child = gauge.labels("web")
    writes = []
    real_inc = child.inc
    child.inc = lambda amount=1.0: (writes.append(amount), real_inc(amount))
    pending = PendingCounts()
    for _ in range(5):  # five short connections
        pending.inc(child, 1)
        pending.inc(child, -1)
    pending.inc(child, 1)  # one still open
    pending.flush()
    assert child._value.get() == 1 and writes == [1]
    pending.inc(child, 1)
    pending.inc(child, -1)
    pending.flush()
    assert child._value.get() == 1 and writes == [1]  # net zero: no write
    pending.inc(child, -1)
    pending.flush()
    assert child._value.get() == 0 and writes == [1, -1]

"""Per-request and per-record metric increments, batched in the worker.

Why: in prometheus_client's multiprocess mode (``vcproxy.metrics``) every
``inc()`` / ``observe()`` is a write into the worker's mmap'd file behind a
lock and an ``os.getpid()`` system call (its fork check). A keep-alive
request paid five of them (the request count, the latency histogram's sum
and bucket, one AEAD open and one seal): ~9% of the worker's CPU per request
in ``bench/onecore.py``'s profile, the ``getpid`` alone 5.5%. Here an
increment is a dict update; ``flush()`` writes each changed child once.

Bound (what a scrape sees): every count reaches the files at most
``FLUSH_INTERVAL_S`` after it happened (the worker runs ``run()``), and at
once when the worker exits after a drain (``flush()`` at its end). A worker
that is killed loses at most its last ``FLUSH_INTERVAL_S`` of these counts.
Per connection, the connection count, the active-connections gauge (its
net change: ``inc`` takes negative amounts for a gauge), the handshake
latency histogram and the byte counters are batched too (seven file writes a
connection, measured ~13 µs of a full handshake's CPU); the handshake
results (``tls_handshakes_total``), the handshake's ECDH and signature
counts and error counters are not: a scrape right after a handshake sees
them. A net change of zero writes nothing.
Within a flush, histograms and ``counts`` are written before ``finals``:
a scrape that sees a request in ``http_requests_total`` (a final) also sees
its latency and the AEAD ops it caused.
"""
from __future__ import annotations

import bisect
from typing import Any

import trio

FLUSH_INTERVAL_S = 0.25


class _PendingHistogram:
    """Observations of one histogram child not yet written: the sum and a count per bucket."""

    __slots__ = ("child", "bounds", "total", "counts")

    def __init__(self, child: Any) -> None:
        self.child = child
        # prometheus_client's Histogram child: _upper_bounds (ascending, +Inf
        # last), one value per bucket (_buckets) and _sum; observe() adds the
        # amount to _sum and 1 to the first bucket whose bound >= amount.
        self.bounds = list(child._upper_bounds)
        self.total = 0.0
        self.counts = [0] * len(self.bounds)

    def observe(self, amount: float) -> None:
        self.total += amount
        self.counts[bisect.bisect_left(self.bounds, amount)] += 1

    def flush(self) -> None:
        if not any(self.counts):
            return
        self.child._sum.inc(self.total)
        for i, n in enumerate(self.counts):
            if n:
                self.child._buckets[i].inc(n)
        self.total = 0.0
        self.counts = [0] * len(self.bounds)


class PendingCounts:
    """Counter increments and histogram observations held until ``flush()``."""

    def __init__(self) -> None:
        self._counts: dict[Any, float] = {}
        self._finals: dict[Any, float] = {}
        self._histograms: dict[int, _PendingHistogram] = {}

    def inc(self, child: Any, amount: float = 1.0) -> None:
        """Add ``amount`` (a gauge child takes negative amounts too)."""
        counts = self._counts
        counts[child] = counts.get(child, 0.0) + amount

    def inc_final(self, child: Any, amount: float = 1.0) -> None:
        """As ``inc``, written after every other pending count of the same flush."""
        finals = self._finals
        finals[child] = finals.get(child, 0.0) + amount

    def observe(self, child: Any, amount: float) -> None:
        pending = self._histograms.get(id(child))
        if pending is None:
            pending = self._histograms[id(child)] = _PendingHistogram(child)
        pending.observe(amount)

    def flush(self) -> None:
        for pending in self._histograms.values():
            pending.flush()
        for batch in (self._counts, self._finals):
            if batch:
                items = list(batch.items())
                batch.clear()
                for child, amount in items:
                    if amount:
                        child.inc(amount)

    async def run(self) -> None:
        """Flush every ``FLUSH_INTERVAL_S`` until cancelled (then once more)."""
        try:
            while True:
                await trio.sleep(FLUSH_INTERVAL_S)
                self.flush()
        finally:
            self.flush()


#: The worker process's pending counts (one per process: the metrics files are per process).
PENDING = PendingCounts()

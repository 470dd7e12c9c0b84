"""The reorder layer: completions leave a data queue in submission order.

Theory of operation
-------------------
The host pops requests from a data virtqueue's avail ring and schedules them
across resources that finish in any order: an accelerator model is slower
than a worker process, a fail-over retry re-runs a request on another
resource long after its neighbours finished. TLS record protection needs a
connection's records back in the order it sent them, so a data queue
configured ``fifo: true`` must publish used-ring entries in submission order
(DESIGN.md §1 "reorder layer", §8a "FIFO only where the protocol needs it").

Per data queue the host keeps one ``ReorderBuffer``:

- ``admit()`` when a request is popped gives it the next submission sequence
  number (0, 1, 2, ...);
- ``complete(seq, item)`` when its result is ready returns the list of items
  that may be published *now*, in the order to publish them.

With ``fifo=True`` a completion is held until every earlier sequence number
has completed (DPDK's ordering ring; the cost is head-of-line blocking behind
a slow request, which is why it is per queue and optional). With
``fifo=False`` every completion is released at once: nothing ever waits
behind a slow request, and the driver matches completions by descriptor id.

Why FIFO is off by default (``fifo: false``): nothing downstream needs
global order. The driver matches used-ring entries by descriptor id, the
engine-backend by token and slot, the frontend by opdone; a TLS record's
order is fixed by its sequence number, sealed into its nonce before it is
submitted, and ``seal_many``/``open_many`` return a batch only when its
whole opdone is done. So one global order per queue would only add
head-of-line blocking: records of every connection held behind an RSA
signature running on a ``workers`` process (measured with
``bench/fifo_hol.py``; README gives the numbers). ``fifo: true`` stays for
a guest driver that assumes in-order completion.

The buffer is sans-IO: no trio, no clock; misuse (completing a sequence
number never admitted, or twice) raises ``ReorderError``.
"""
from __future__ import annotations

from typing import Generic, TypeVar

__all__ = ["ReorderBuffer", "ReorderError"]

T = TypeVar("T")


class ReorderError(Exception):
    """API misuse: a sequence number completed that is not outstanding."""


class ReorderBuffer(Generic[T]):
    """Releases completions of one data queue, in submission order if ``fifo``."""

    def __init__(self, fifo: bool):
        self.fifo = fifo
        self._next_seq = 0          # handed out by the next admit()
        self._next_release = 0      # fifo: lowest seq not yet released
        self._outstanding: set[int] = set()   # admitted, not yet completed
        self._held: dict[int, T] = {}         # fifo: completed, waiting for earlier seqs
        #: completions released later than they finished because an earlier
        #: request was still running (the head-of-line cost, for metrics).
        self.held_total = 0

    def admit(self) -> int:
        """Assign the next submission sequence number to a request."""
        seq = self._next_seq
        self._next_seq += 1
        self._outstanding.add(seq)
        return seq

    def complete(self, seq: int, item: T) -> list[T]:
        """Record that request ``seq`` finished with ``item``; return what may
        be published now, in publication order."""
        if seq not in self._outstanding:
            state = "already completed" if seq < self._next_seq else "never admitted"
            raise ReorderError(f"complete(seq={seq}): sequence number {state}")
        self._outstanding.discard(seq)
        if not self.fifo:
            return [item]
        if seq != self._next_release:
            self.held_total += 1    # finished early: waits for an earlier request
        self._held[seq] = item
        released: list[T] = []
        while self._next_release in self._held:
            released.append(self._held.pop(self._next_release))
            self._next_release += 1
        return released

    @property
    def in_flight(self) -> int:
        """Requests admitted and not yet completed."""
        return len(self._outstanding)

    @property
    def held(self) -> int:
        """Completed requests waiting for an earlier one (always 0 unless fifo)."""
        return len(self._held)

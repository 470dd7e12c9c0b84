"""``KeySharePool``: pre-generated ephemeral ECDHE key shares of one worker
process, for a provider whose key exchange is remote (vcrypto).

Theory of operation
-------------------
Why: a TLS 1.3 full handshake whose server share is known at ClientHello
sends its derive (scalar || client share, the keyed ECDH form) and its
CertificateVerify signature together: one round trip to the engine, one
device batch (``_provider``: ``key_share``). The one-op exchange instead
returns our share with the secret, and the signature can only leave after
the ServerHello is built from it: two round trips, each paying the
cross-process wake-ups.

How: per group, a FIFO of ``(expires_at, KeyShare)``. ``take(group)`` is
sync (the sans-IO handshake calls it through the provider): it drops
expired shares, hands out the oldest live one *and forgets it* (each share
serves exactly one handshake), and, when the stock falls below half of
``size``, wakes the group's *keeper*. The keeper is a trio system task, one
per group and trio run, started by the first ``take``: it refills the stock
to ``size`` with ONE call of ``generate(group, n)`` (vcrypto: n keygens, the
keyed form against the base point, submitted at once: one device batch per
16), so a refill costs one round trip per ~``size/2`` handshakes and never
delays a handshake (a take that finds the stock empty returns None: that
handshake uses the one-op exchange; it is counted as ``missed``).

Forward secrecy: a share is discarded unused ``lifetime_s`` after it was
generated; the keeper sleeps until the oldest share's expiry and purges it
even when no handshake comes. A group nobody asks for is not refilled: its
keeper exits once the stock is empty, and the next take (a miss) starts it
again, so an idle proxy generates nothing. Shares live in this process's
memory only (never in shared memory); a forked child drops its parent's
stock at its first take (the pid changed), so no share serves two processes.

Failures: a ``generate`` that raises (the engine failed the keygens and no
fallback took them) is counted (``refill_failures``) and retried no sooner
than ``RETRY_S`` later; handshakes meanwhile miss and use the one-op path,
so no handshake is lost to a failed refill. The keeper stays while shares
are left in stock, so they still expire on time.
"""
from __future__ import annotations

import collections
import dataclasses
import logging
import os
import time
from collections.abc import Awaitable, Callable

import trio

from ._provider import KeyShare

#: After a failed refill, the next attempt waits this long (handshakes miss meanwhile).
RETRY_S = 1.0

_log = logging.getLogger("vcproxy.tls.keyshares")


@dataclasses.dataclass
class KeySharePoolStats:
    generated: int = 0        # shares a refill added
    used: int = 0             # takes that got a share
    missed: int = 0           # takes that found none (the one-op path ran)
    expired: int = 0          # shares discarded unused after lifetime_s
    refills: int = 0          # generate() calls that returned shares
    refill_failures: int = 0  # generate() calls that raised or returned none


class KeySharePool:
    """See the module docstring. ``generate(group, n)`` returns up to ``n``
    fresh ``KeyShare`` objects of ``group``; ``size`` 0 turns the pool off
    (every take misses, nothing is generated)."""

    def __init__(self, generate: Callable[[str, int], Awaitable[list[KeyShare]]], *,
                 size: int = 32, lifetime_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic):
        if size < 0 or not lifetime_s > 0:
            raise ValueError(f"key share pool: size {size} must be >= 0, lifetime_s {lifetime_s} > 0")
        self.size = size
        self.low_water = (size + 1) // 2
        self.lifetime_s = lifetime_s
        self.stats = KeySharePoolStats()
        self._generate = generate
        self._clock = clock
        self._stock: dict[str, collections.deque[tuple[float, KeyShare]]] = {}
        #: group -> (trio token of the run its keeper runs in, event that wakes it)
        self._keepers: dict[str, tuple[object, trio.Event]] = {}
        self._retry_at: dict[str, float] = {}
        self._pid = os.getpid()

    def stocked(self, group: str) -> int:
        """Live shares of ``group`` in stock now (expired ones are dropped first)."""
        stock = self._stock.get(group)
        if not stock:
            return 0
        self._purge(stock, self._clock())
        return len(stock)

    def take(self, group: str) -> KeyShare | None:
        """The oldest live share of ``group`` (forgotten: it is used once), or None."""
        if self.size == 0:
            return None
        if os.getpid() != self._pid:  # a forked child: the stock is its parent's
            self._stock.clear()
            self._keepers.clear()
            self._pid = os.getpid()
        stock = self._stock.get(group)
        if stock is None:
            stock = self._stock[group] = collections.deque()
        share = None
        if stock:
            self._purge(stock, self._clock())
            if stock:
                share = stock.popleft()[1]
        if share is None:
            self.stats.missed += 1
        else:
            self.stats.used += 1
        if len(stock) < self.low_water:
            self._wake(group)
        return share

    def _purge(self, stock: collections.deque, now: float) -> None:
        while stock and stock[0][0] <= now:
            stock.popleft()
            self.stats.expired += 1

    def _wake(self, group: str) -> None:
        try:
            token = trio.lowlevel.current_trio_token()
        except RuntimeError:
            return  # not in a trio run (a sans-IO test): nothing to refill with
        keeper = self._keepers.get(group)
        if keeper is not None and keeper[0] is token:
            keeper[1].set()
            return
        if self._clock() < self._retry_at.get(group, 0.0):
            return
        self._keepers[group] = (token, trio.Event())
        trio.lowlevel.spawn_system_task(self._keep, group, token, name=f"key share keeper {group}")

    async def _keep(self, group: str, token: object) -> None:
        """Refill ``group`` while it is wanted; purge expired shares on time."""
        stock = self._stock[group]
        try:
            while True:
                if len(stock) < self.low_water and self._clock() >= self._retry_at.get(group, 0.0):
                    # A failure: no retry before RETRY_S (a take wakes us); the
                    # shares still in stock are purged on time all the same.
                    await self._refill(group, stock)
                if not stock:
                    return
                wake = trio.Event()
                self._keepers[group] = (token, wake)
                with trio.move_on_after(max(0.0, stock[0][0] - self._clock())):
                    await wake.wait()
                self._purge(stock, self._clock())
                if not stock:
                    return  # nobody took any before they expired: idle, stop generating
        finally:
            if self._keepers.get(group, (None,))[0] is token:
                del self._keepers[group]

    async def _refill(self, group: str, stock: collections.deque) -> bool:
        want = self.size - len(stock)
        try:
            shares = await self._generate(group, want)
        except Exception as exc:  # noqa: BLE001 - a system task must not crash the run
            shares = []
            _log.warning("key share refill for %s failed: %r", group, exc)
        if not shares:
            self.stats.refill_failures += 1
            self._retry_at[group] = self._clock() + RETRY_S
            return False
        if os.getpid() != self._pid:
            return False
        expires_at = self._clock() + self.lifetime_s
        for share in shares[:want]:
            stock.append((expires_at, share))
        self.stats.refills += 1
        self.stats.generated += min(len(shares), want)
        return True

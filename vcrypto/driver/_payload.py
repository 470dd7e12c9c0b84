"""Byte-payload convenience for tests and benchmarks: submit ``bytes``, get
``bytes`` back, through a buffer region the helper owns and registers.

Each in-flight request owns one fixed-size buffer slot of the region; inputs
are copied in (iv | aad | src), the result is read back from dst. Real
callers (the engine-backend) build ``DataOp``s over their own regions and
skip both copies.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

from vcrypto.driver._driver import DataOp, Driver, DriverTimeout, RegionHandle
import trio

from vcrypto.ops import Alg, Op, max_dst_bytes
from vcrypto.shm.region import Region
from vcrypto.wire import virtio_crypto as vc


@dataclasses.dataclass(frozen=True, slots=True)
class Item:
    session_id: int
    op: Op
    alg: Alg
    src: bytes
    iv: bytes = b""
    aad: bytes = b""


@dataclasses.dataclass(frozen=True, slots=True)
class Result:
    status: int
    data: bytes

    @property
    def ok(self) -> bool:
        return self.status == vc.VIRTIO_CRYPTO_OK


class PayloadPool:
    def __init__(self, driver: Driver, queue: int, handle: RegionHandle, slot_bytes: int,
                 slots: int):
        self.driver = driver
        self.queue = queue
        self.handle = handle
        self.slot_bytes = slot_bytes
        self.slots = slots

    @classmethod
    async def create(cls, driver: Driver, queue: int = 0, *, slot_bytes: int = 40 * 1024,
                     slots: int | None = None) -> PayloadPool:
        slots = slots or driver.queues[queue].capacity
        region = Region.create(f"payload-q{queue}", slot_bytes * slots)
        handle = await driver.register_region(region)
        return cls(driver, queue, handle, slot_bytes, slots)

    def _op_for(self, slot: int, item: Item, token) -> DataOp:
        base = slot * self.slot_bytes
        dst_len = max_dst_bytes(item.op, item.alg, len(item.src))
        need = len(item.iv) + len(item.aad) + len(item.src) + dst_len
        if need > self.slot_bytes:
            raise ValueError(f"request needs {need} bytes, slot holds {self.slot_bytes}")
        mem = self.handle.region
        off = base
        bufs = []
        for data in (item.iv, item.aad, item.src):
            mem.write(off, data)
            bufs.append(self.handle.buf(off, len(data)) if data else None)
            off += len(data)
        dst = self.handle.buf(off, dst_len)
        return DataOp(item.session_id, item.op, src=bufs[2] or self.handle.buf(off, 0),
                      dst=dst, iv=bufs[0], aad=bufs[1], token=(token, dst))

    async def run(self, items: Sequence[Item], *, window: int | None = None,
                  poll_s: float = 0.0, timeout_s: float | None = None) -> list[Result]:
        """Run every item (at most ``window`` in flight); results in item order.
        ``poll_s``: poll the used ring this long before sleeping on the call fd.
        ``timeout_s``: ``DriverTimeout`` if the device has not answered every
        item by then (requests still in flight own their slots: close the
        driver, the pool cannot be reused)."""
        q = self.driver.queues[self.queue]
        deadline = math.inf if timeout_s is None else trio.current_time() + timeout_s
        window = min(window or self.slots, self.slots, q.capacity)
        free = list(range(window))
        results: list[Result | None] = [None] * len(items)
        next_i = done = 0
        while done < len(items):
            batch = []
            while next_i < len(items) and free:
                slot = free.pop()
                batch.append(self._op_for(slot, items[next_i], (next_i, slot)))
                next_i += 1
            if batch:
                accepted = q.enqueue_burst(batch)
                for dop in batch[accepted:]:     # ring full: retry those later
                    (i, slot), _dst = dop.token
                    free.append(slot)
                    next_i = min(next_i, i)
            completions = q.dequeue_burst()
            if not completions:
                try:
                    await q.wait_used(poll_s, deadline=deadline)
                except DriverTimeout:
                    raise DriverTimeout(f"PayloadPool.run: {len(items) - done} of {len(items)} "
                                        f"requests", f"{timeout_s:g} s") from None
                continue
            for c in completions:
                (i, slot), dst = c.token
                data = bytes(dst.view()[:c.dst_len]) if c.status == vc.VIRTIO_CRYPTO_OK else b""
                results[i] = Result(c.status, data)
                free.append(slot)
                done += 1
        return results  # type: ignore[return-value]

    async def aclose(self) -> None:
        await self.driver.unregister_region(self.handle)
        self.handle.region.close()

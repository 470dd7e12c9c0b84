"""ConnectionSlots' decisions without sockets: who is shed, in which order, and the pressure deadline."""
from __future__ import annotations

import trio

from vcproxy.config import LimitsConfig
from vcproxy.proxy._http import ConnState
from vcproxy.proxy._slots import SHED_BATCH, ConnectionSlots

LIMITS = LimitsConfig(handshake_timeout_s=10.0, handshake_timeout_under_pressure_s=2.0)


def conn() -> ConnState:
    return ConnState("192.0.2.1", 1, trio.Event())


async def take(slots: ConnectionSlots, n: int) -> list[ConnState]:
    out = []
    for _ in range(n):
        await slots.semaphore.acquire()
        c = conn()
        slots.admit(c, "l")
        out.append(c)
    return out


async def test_opening_oldest_first_then_idle_never_busy():
    slots = ConnectionSlots(SHED_BATCH + 8)
    busy = await take(slots, 4)
    idle = await take(slots, 4)
    for c in idle:
        c.idle_scope = trio.CancelScope()
    opening = await take(slots, SHED_BATCH)
    scopes = [slots.opening_scope(c, LIMITS) for c in opening]
    assert slots.shed_for_newcomer() == SHED_BATCH
    assert all(s.cancel_called for s in scopes)
    assert not any(c.idle_scope.cancel_called for c in idle)
    assert slots.shed_for_newcomer() == 0  # the victims have not given their slots back yet
    for c in opening:
        slots.release(c)
    await take(slots, SHED_BATCH)  # newcomers take the freed slots (and stay busy)
    assert slots.shed_for_newcomer() == 4  # nothing opening left: the idle ones, and never the busy
    assert all(c.idle_scope.cancel_called for c in idle)
    assert not slots.shed & set(busy)


async def test_pressure_tightens_running_and_new_handshakes():
    slots = ConnectionSlots(8)
    first = await take(slots, 1)
    scope = slots.opening_scope(first[0], LIMITS)
    assert scope.deadline - trio.current_time() > 9
    await take(slots, 5)  # 6 of 8 taken: not over 75%
    assert scope.deadline - trio.current_time() > 9
    late = await take(slots, 1)  # 7 of 8: pressure
    assert scope.deadline - trio.current_time() <= 2.0
    assert slots.opening_scope(late[0], LIMITS).deadline - trio.current_time() <= 2.0
    assert slots.shed_for_newcomer() == 0  # a slot is free: nobody is shed

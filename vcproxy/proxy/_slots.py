"""A worker's connection slots, and who gives one up when they run short.

Theory of operation. ``limits.max_connections`` slots per worker; a slot is
taken before ``accept()`` and given back when the connection ends. Past the
limit a new client waits in the kernel backlog, which is right while the
slots hold real work, and wrong when they are held by clients that never
finish a handshake (a slow-ClientHello flood) or by idle keep-alive
connections: the new client would wait for a timeout to free one.

So each connection is, for this module, in one of three phases:

- *opening*: accepted, PROXY header and/or TLS handshake not done. Its
  phase runs in a cancel scope registered here, oldest first;
- *idle*: between requests (``ConnState.idle_scope`` is set by the HTTP
  core while it waits for a request's first byte);
- *busy*: anything else (a request in flight, a tcp/WebSocket session).

When every slot is taken and a client is waiting in the backlog (the
listening socket is readable), ``shed_for_newcomer`` cancels up to
``SHED_BATCH`` connections: opening ones first, oldest first, then idle ones,
oldest first; not again until those have given their slots back (so a burst
of newcomers does not shed more than it takes). Busy connections are never shed; with nothing to shed the
newcomer waits as before. A shed opening connection is closed without a
word (its handshake never finished); a shed idle one ends as an idle
timeout would.

Pressure: while more than ``PRESSURE_FRACTION`` of the slots are taken, an
opening phase gets ``limits.handshake_timeout_under_pressure_s`` instead of
``limits.handshake_timeout_s`` (connections already opening when pressure
starts get the tighter deadline too). The first shed after a calm period
logs ``shedding_started``; the return below half the slots logs
``shedding_stopped`` with the count. ``vcproxy_connections_shed_total``
counts shed connections by listener and phase.
"""
from __future__ import annotations

from typing import Any

import trio

from vcproxy import _log
from vcproxy.config import LimitsConfig
from vcproxy.metrics import metrics
from ._http import ConnState

PRESSURE_FRACTION = 0.75
#: Connections shed per newcomer that found no slot: more than one, so a
#: flood's reconnects do not meet a full house on every accept.
SHED_BATCH = 16


class ConnectionSlots:
    def __init__(self, size: int) -> None:
        self.size = size
        self.semaphore = trio.Semaphore(size)
        self.pressure_handshake_timeout_s = 0.0  # the latest limits' (see opening_scope)
        #: every open connection -> its listener's name, oldest first
        self.conns: dict[ConnState, str] = {}
        #: connections in their opening phase -> that phase's cancel scope, oldest first
        self.opening: dict[ConnState, trio.CancelScope] = {}
        self.shed: set[ConnState] = set()
        self._pressure = False
        self._shedding = False
        self._episode_shed = 0
        self._shed_counters: dict[tuple[str, str], Any] = {}

    @property
    def taken(self) -> int:
        return self.size - self.semaphore.value

    # ------------------------------------------------------------ a connection's life

    def admit(self, conn: ConnState, listener: str) -> None:
        """``conn`` holds a slot now (taken by the accept loop)."""
        self.conns[conn] = listener
        if not self._pressure and self.taken > PRESSURE_FRACTION * self.size:
            self._pressure = True
            self._tighten_opening_deadlines()

    def opening_scope(self, conn: ConnState, limits: LimitsConfig) -> trio.CancelScope:
        """The cancel scope ``conn``'s opening phase runs in: its deadline is the
        handshake timeout (the tighter one under pressure), a shed cancels it."""
        self.pressure_handshake_timeout_s = limits.handshake_timeout_under_pressure_s
        timeout_s = limits.handshake_timeout_under_pressure_s if self._pressure else limits.handshake_timeout_s
        scope = trio.CancelScope(deadline=trio.current_time() + timeout_s)
        self.opening[conn] = scope
        return scope

    def opened(self, conn: ConnState) -> None:
        self.opening.pop(conn, None)

    def release(self, conn: ConnState) -> None:
        self.opening.pop(conn, None)
        self.conns.pop(conn, None)
        self.shed.discard(conn)
        self.semaphore.release()
        if self._pressure and self.taken <= PRESSURE_FRACTION * self.size:
            self._pressure = False
        if self._shedding and self.taken < self.size // 2:
            self._shedding = False
            _log.error_log.info("shedding_stopped", shed=self._episode_shed, open_connections=self.taken)
            self._episode_shed = 0

    # ------------------------------------------------------------ shedding

    def _tighten_opening_deadlines(self) -> None:
        deadline = trio.current_time() + self.pressure_handshake_timeout_s
        for scope in self.opening.values():
            if scope.deadline > deadline:
                scope.deadline = deadline

    def shed_for_newcomer(self, force: bool = False) -> int:
        """Every slot is taken and a client waits: cancel up to ``SHED_BATCH``
        opening, then idle connections, oldest first. Returns how many.
        ``force``: shed although slots are free (accept ran out of file descriptors)."""
        if not force and (self.semaphore.value > 0 or self.shed):
            return 0  # a slot is free, or the last victims are still closing: their slots are coming
        victims: list[tuple[ConnState, str]] = []
        for conn in self.opening:
            if conn not in self.shed:
                victims.append((conn, "handshake"))
                if len(victims) >= SHED_BATCH:
                    break
        if len(victims) < SHED_BATCH:
            for conn in self.conns:
                if conn.idle_scope is not None and conn not in self.shed and conn not in self.opening:
                    victims.append((conn, "idle"))
                    if len(victims) >= SHED_BATCH:
                        break
        for conn, phase in victims:
            self.shed.add(conn)
            scope = self.opening[conn] if phase == "handshake" else conn.idle_scope
            scope.cancel()
            self._count(self.conns.get(conn, ""), phase)
        if victims:
            self._episode_shed += len(victims)
            if not self._shedding:
                self._shedding = True
                _log.error_log.warning(
                    "shedding_started", open_connections=self.taken, max_connections=self.size,
                    opening=len(self.opening),
                    handshake_timeout_s=self.pressure_handshake_timeout_s)
        return len(victims)

    def _count(self, listener: str, phase: str) -> None:
        key = (listener, phase)
        child = self._shed_counters.get(key)
        if child is None:
            child = self._shed_counters[key] = metrics().connections_shed_total.labels(listener, phase)
        child.inc()

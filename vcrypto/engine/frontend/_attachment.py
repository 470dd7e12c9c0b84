"""One attachment of a frontend to an engine-backend: the fds and mappings
it received, the free lists of its slots and opdones, and the tasks waiting
on it.

Lifecycle (``AttachState``): LIVE while requests are offloaded through it;
DETACHED once the backend is gone, hung, or the frontend closed (nothing new
is submitted; tasks still reading results hold ``users``). Its resources are
released once each, whichever path ends it first: the socket and eventfds
(``close_fds``) and the two mappings (``maybe_unmap``: only when DETACHED,
no task reads slots and the waiter task is over; a hung backend or host may
still write the region, so it is never reused — the frontend reattaches
with a fresh one).
"""
from __future__ import annotations

import enum
import os
import socket

import trio

from vcrypto.shm.region import Region, RegionError

from ..contract import BackendRegion, FrontendRegion, control


class Detached(Exception):
    """The attachment ended while a control request waited on it."""


class AttachState(enum.Enum):
    LIVE = "live"
    DETACHED = "detached"


class Attachment:
    def __init__(self, gen: int, sock, raw: socket.socket, efd: int, fshm: Region,
                 sshm: Region, doorbell: int, decoder: control.FrameDecoder):
        self.gen = gen
        self.pid = os.getpid()
        self.state = AttachState.LIVE
        self.sock = sock
        self.efd = efd
        self.doorbell = doorbell
        self.region = FrontendRegion(fshm.buf)
        self.shared = BackendRegion(sshm.buf)
        # Owned resources, None once released (each released exactly once).
        self._fds: tuple[socket.socket, int, int] | None = (raw, efd, doorbell)
        self._maps: tuple[Region, Region] | None = (fshm, sshm)
        geo = self.region.geometry
        self.free_slots = list(range(geo.slot_count - 1, -1, -1))
        self.free_opdones = list(range(geo.opdone_count - 1, -1, -1))
        # opdone -> submit time (ns) while at the backend (waited on or
        # orphaned); insertion order is submit order: the first is the oldest.
        self.sent_at: dict[int, int] = {}
        self.stall_check_ns = 0     # last stall check, and where ages restart
        self.stall_from_ns = 0
        self.progress_ns = 0        # last completion seen from the backend
        # Tasks wait here for free slots + an opdone. A group takes all its
        # slots at once (no partial holdings), see Frontend.run.
        self.capacity = trio.lowlevel.ParkingLot()
        self.waiting: dict[int, trio.Event] = {}
        self.orphans: dict[int, list[int]] = {}
        self.has_work = trio.Event()
        # Doorbell coalescing: submissions of one trio scheduling batch share
        # one doorbell, rung by the kicker task after they all ran.
        self.kick = trio.Event()
        self.kick_pending = False
        self.replies: dict[int, list] = {}
        self.send_lock = trio.Lock()
        self.decoder = decoder
        self.users = 0              # run() calls that may still read the region
        self.waiter_running = True  # the waiter task (the last reader of the eventfd)

    @property
    def alive(self) -> bool:
        return self.state is AttachState.LIVE

    @property
    def fds_closed(self) -> bool:
        return self._fds is None

    def end(self) -> None:
        """LIVE -> DETACHED: nothing new is submitted through it."""
        self.state = AttachState.DETACHED

    def maybe_unmap(self) -> None:
        """Unmap both regions once the attachment is over and nothing can
        read them any more (no run() in progress, waiter gone)."""
        if self.alive or self.users or self.waiter_running or self._maps is None:
            return
        maps, self._maps = self._maps, None
        self.region.release()
        self.shared.release()
        for shm in maps:
            try:
                shm.close()
            except RegionError:  # a view still held somewhere: the GC finishes it
                pass

    def close_fds(self) -> None:
        """Close the socket and eventfds once (several paths end an
        attachment). The shared mappings go with the last reference."""
        if self._fds is None:
            return
        (raw, efd, doorbell), self._fds = self._fds, None
        raw.close()
        os.close(efd)
        os.close(doorbell)

"""The frontend's counters (plain ints, read by the application's metrics)."""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class FrontendStats:
    submitted: int = 0           # requests offloaded through the trans ring
    opdones: int = 0             # opdone records used (<= 16 requests each)
    opdone_waits: int = 0        # times a task suspended on its opdone
    waiter_wakes: int = 0        # eventfd wake-ups of the waiter
    waiter_polls: int = 0        # opdone scans made instead of arming (the loop was busy)
    doorbells: int = 0           # doorbell writes (backend was asleep)
    fallback_requests: int = 0   # computed in-process: engine away (detached, device down)
    stalls: int = 0              # detached: a request outstanding past stall_timeout_s
    redone_requests: int = 0     # device reported ERR: redone in-process for the real answer
    attaches: int = 0
    detaches: int = 0
    local_hits: int = 0          # session found in the local handle table
    shared_hits: int = 0         # session found in the shared cache
    backend_opens: int = 0       # session opened by a backend round trip

"""The engine's contract: what the frontend library and the engine-backend
daemon share, and all they share. Both import this package; neither imports
the other (as ``vcrypto.host`` and ``vcrypto.driver`` meet only on
``vcrypto.wire``).

- ``_region``: the frontend region, byte by byte (header, trans ring, request
  slots, ``Opdones``, data chunks), ``Geometry``, ``SlotStatus`` and the
  op/alg codes written into slots;
- ``_session_cache``: the backend's shared region (``BackendRegion``: sleep
  flag, device state) with the ``SessionCache``, and ``SessionMeta``, what a
  session is;
- ``_control``: the control-channel messages (attach, open, acquire,
  release, stats);
- ``_inline``: in-process execution of a session with the same statuses a
  device reports (the frontend's fallback, the backend's local device).
"""
from . import _control as control
from ._inline import InlineOpError, InlineSession, ecdh_split
from ._region import (PIPELINE_DEPTH, BadSlotError, FrontendRegion, Geometry, LayoutError,
                      Opdones, SlotRequest, SlotStatus)
from ._session_cache import BackendRegion, CacheGeometry, SessionCache, SessionMeta

__all__ = [
    "PIPELINE_DEPTH", "BackendRegion", "BadSlotError", "CacheGeometry", "FrontendRegion",
    "Geometry", "InlineOpError", "InlineSession", "LayoutError", "Opdones", "SessionCache",
    "SessionMeta", "SlotRequest", "SlotStatus", "control", "ecdh_split",
]

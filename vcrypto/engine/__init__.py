"""vcrypto engine: the frontend library applications load, the
engine-backend daemon that serves every frontend of one device, and the
contract between them — three packages, as DESIGN §2 has two processes:

- ``vcrypto.engine.contract``: what both processes share (the frontend
  region and its ``Opdones``, the backend region and its ``SessionCache``,
  ``SessionMeta``, slot statuses, control messages, in-process execution);
- ``vcrypto.engine.frontend``: the library (``Frontend``), imported by the
  application;
- ``vcrypto.engine.backend``: the daemon (``python -m
  vcrypto.engine.backend``), never imported by an application.

The frontend and the backend never import each other. This package's face
is what an application needs::

    fe = Frontend(backend_socket, linger_s=1.0, reconnect_interval_s=0.5)
    await fe.start() -> bool                       # attached? (else in-process fallback)
    fe.reattach_soon()                             # idle and detached: try again in the background
    h = await fe.open_session(SessionMeta(op, alg, key=b"", key_ref=""))
    results = await fe.run(h, [(src, iv, aad), ...])   # [(SlotStatus, bytes)], in order
    await fe.close_session(h, linger=True)
    fe.stats -> FrontendStats; await fe.backend_stats() -> dict
    await fe.aclose(); fe.close_nowait()
"""
from .contract import Geometry, InlineOpError, InlineSession, SessionMeta, SlotStatus, ecdh_split
from .frontend import EngineSession, EngineUnavailable, Frontend, FrontendStats

__all__ = ["EngineSession", "EngineUnavailable", "Frontend", "FrontendStats", "Geometry",
           "InlineOpError", "InlineSession", "SessionMeta", "SlotStatus", "ecdh_split"]

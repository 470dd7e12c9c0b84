"""vcrypto engine: the frontend library applications load, and the
engine-backend daemon (``python -m vcrypto.engine.backend``) that serves
every frontend of one device.

Public surface::

    fe = Frontend(backend_socket, linger_s=1.0, reconnect_interval_s=0.5)
    await fe.start() -> bool                       # attached? (else in-process fallback)
    h = await fe.open_session(SessionMeta(op, alg, key=b"", key_ref=""))
    results = await fe.run(h, [(src, iv, aad), ...])   # [(SlotStatus, bytes)], in order
    await fe.close_session(h, linger=True)
    fe.stats -> FrontendStats; await fe.backend_stats() -> dict
    await fe.aclose(); fe.close_nowait()

Layouts of the shared memory are documented byte by byte in ``_layout``;
the trans ring in ``vcrypto.shm.ring``; the control channel in ``_control``.
"""
from ._layout import Geometry, SessionMeta, SlotStatus
from .frontend import EngineSession, EngineUnavailable, Frontend, FrontendStats

__all__ = ["EngineSession", "EngineUnavailable", "Frontend", "FrontendStats", "Geometry",
           "SessionMeta", "SlotStatus"]

"""The engine frontend: the library every application process loads.

``Frontend`` (``_frontend``: attach, the request path, the waiter, stalls
and fallback; its docstring is the theory of operation), its
``Attachment`` to one engine-backend (``_attachment``) and its session
handle table (``_handles``). Talks to the engine-backend only through the
shared ``vcrypto.engine.contract``; never imports the backend.
"""
from ._frontend import DEFAULT_STALL_TIMEOUT_S, Frontend, Item, Result
from ._handles import EngineSession, EngineUnavailable
from ._stats import FrontendStats

__all__ = ["DEFAULT_STALL_TIMEOUT_S", "EngineSession", "EngineUnavailable", "Frontend",
           "FrontendStats", "Item", "Result"]

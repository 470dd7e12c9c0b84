"""vcrypto-engine-backend: the daemon, one per device (``python -m
vcrypto.engine.backend``, console script ``vcrypto-engine-backend``).

- ``_loop``: ``Backend``, the poll loop (the data plane; its docstring is the
  theory of operation) and ``BackendConfig``;
- ``_control_plane``: ``ControlPlane``, frontends' attach and control
  messages;
- ``_sessions``: the backend's session table (refcounts, cache entries);
- ``_device`` / ``_hostdevice``: what the backend drives (``CryptoDevice``:
  a ``HostDevice`` reached through ``vcrypto.driver``, or a ``LocalDevice``);
- ``_metrics``: counters and the Prometheus collector; ``_main``: the CLI;
- ``_status``: the admin status document (built on the loop's thread);
  ``_admin``: the admin socket's thread (``vcrypto.admin.serve_admin``).

Talks to frontends only through the shared ``vcrypto.engine.contract``;
never imports the frontend.
"""
from ._loop import Backend, BackendConfig
from ._main import main

__all__ = ["Backend", "BackendConfig", "main"]

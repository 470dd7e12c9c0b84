"""vcproxy.proxy: the trio I/O side — listeners, HTTP/TCP proxying, upstream pools.

- ``_worker``: one worker process (config generations, provider, signals: drain, reload)
- ``_listener``: SO_REUSEPORT sockets, accept loop, one connection's life (byte counting, TLS seam)
- ``_http``: HTTP/1.1 reverse proxying on h11 over any ``trio.abc.Stream``
- ``_tcp``: tcp mode (byte pumping after TLS)
- ``_splice``: the bidirectional byte pump (tcp mode, HTTP/1.1 upgrades)
- ``_upstream``: upstream pools (round-robin, retries, keep-alive, health checks)
- ``_router``: host + path-prefix routing (pure)
- ``_requestline``: what an HTTP/1.x request line may ask for (pure)
- ``_proxy_header``: the PROXY protocol v1/v2 codec (sans-IO)
- ``_forwarding``: trusted hops and the forwarding headers (pure)
- ``_tlsglue``: config -> ``ServerConfig``, counting/fallback crypto providers
- ``_check``: ``check_files``, what check-config adds to the schema (files, TLS, warnings)
- ``demo_upstream``: the built-in origin server for the demo and tests
"""
from ._http import ConnState, HttpProxyConnection, HttpRuntime, NullObserver
from ._router import Router
from ._check import check_files
from ._tlsglue import certificate_not_after
from ._upstream import UpstreamPool
from ._worker import reload_problems

__all__ = ["ConnState", "HttpProxyConnection", "HttpRuntime", "NullObserver", "Router", "UpstreamPool", "certificate_not_after", "check_files",
           "reload_problems"]

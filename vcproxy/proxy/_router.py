"""Host + path-prefix routing (pure code: no I/O)."""
from __future__ import annotations

from collections.abc import Sequence

from vcproxy.config import RouteConfig


def normalise_host(host_header: str) -> str:
    """``Example.COM:8443`` -> ``example.com``; ``[::1]:8443`` -> ``::1``."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    if host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host.rstrip(".")


def _host_score(pattern: str | None, host: str) -> int:
    """3 exact, 2 wildcard, 1 catch-all, 0 no match."""
    if pattern is None or pattern == "*":
        return 1
    pattern = pattern.lower()
    if pattern == host:
        return 3
    if pattern.startswith("*.") and host.endswith(pattern[1:]) and len(host) > len(pattern) - 1:
        return 2
    return 0


class Router:
    """The most specific host match wins, then the longest path prefix, then config order."""

    def __init__(self, routes: Sequence[RouteConfig]) -> None:
        self.routes = tuple(routes)

    def match(self, host: str, path: str) -> RouteConfig | None:
        best: tuple[int, int] | None = None
        chosen = None
        for route in self.routes:
            score = _host_score(route.host, host)
            if not score or not _prefix_matches(route.path_prefix, path):
                continue
            key = (score, len(route.path_prefix))
            if best is None or key > best:
                best, chosen = key, route
        return chosen


def _prefix_matches(prefix: str, path: str) -> bool:
    # "/api" matches "/api", "/api/x" and "/api?q" but not "/apix".
    if prefix == "/" or path == prefix:
        return True
    if not path.startswith(prefix):
        return False
    return prefix.endswith("/") or path[len(prefix)] in "/?"

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


def never_matching(routes: Sequence[RouteConfig]) -> list[tuple[int, str]]:
    """Routes ``Router.match`` can never choose, by index, with the reason.

    Two real cases follow from the rules above. A host pattern that no
    normalised Host can equal (``normalise_host`` strips the port, the
    brackets of an IPv6 literal and a trailing dot, and ``*`` is a wildcard
    only as ``*`` or a leading ``*.`` label). And a route with the same host
    pattern and path prefix as an earlier one: ties keep the first. (An
    earlier catch-all shadows nothing: the most specific host wins whatever
    the order.)
    """
    out = []
    seen: dict[tuple[str, str], int] = {}
    for i, route in enumerate(routes):
        problem = _unmatchable_host(route.host)
        if problem is not None:
            out.append((i, problem))
            continue
        host = "*" if route.host is None else route.host.lower()
        earlier = seen.setdefault((host, route.path_prefix), i)
        if earlier != i:
            out.append((i, f"same host and path_prefix as routes[{earlier}], which always wins the tie"))
    return out


def _unmatchable_host(pattern: str | None) -> str | None:
    if pattern is None or pattern == "*":
        return None
    why = None
    if pattern.count(":") == 1 or pattern.startswith("[") or pattern.endswith("."):
        why = f"the Host header is matched without port, brackets or trailing dot ({normalise_host(pattern)!r})"
    elif any(c in pattern for c in "/ \t@"):
        why = "a host name has no '/', '@' or blanks (a URL or an address with a user is not a host)"
    elif "*" in pattern[2:] or ("*" in pattern and not pattern.startswith("*.")):
        why = "'*' is a wildcard only as '*' or a leading '*.' label"
    return None if why is None else f"host {pattern!r} can never match: {why}"

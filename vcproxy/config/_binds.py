"""Port collisions: the TCP addresses one config binds, and which pairs clash.

``Config.binds()`` lists them (listeners, metrics, the daemons' metrics, the
demo upstream); ``port_collisions`` names each clash at its config path, so
check-config and ``vcproxy run`` refuse a config whose sockets could never
all be bound instead of failing half-way through start-up.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass


@dataclass(frozen=True)
class Bind:
    """One TCP address a config binds; ``reuseport``: bound with SO_REUSEPORT
    (the listeners: every worker binds them, so two of them on one exact
    address would silently share their connections)."""

    path: str
    address: str
    port: int
    reuseport: bool = False

    def __str__(self) -> str:
        return f"[{self.address}]:{self.port}" if ":" in self.address else f"{self.address}:{self.port}"


def _overlap(a: str, b: str) -> bool:
    """Whether binding the same port on ``a`` and ``b`` conflicts: the same
    address, or a wildcard covering the other (``::`` is dual-stack on Linux
    by default, so it covers IPv4 too)."""
    try:
        ia, ib = ipaddress.ip_address(a), ipaddress.ip_address(b)
    except ValueError:  # a host name (a daemon's metrics 'localhost:9101'): only the same one is known to clash
        return a == b
    if ia == ib:
        return True
    for wild, other in ((ia, ib), (ib, ia)):
        if wild.is_unspecified and (wild.version == 6 or other.version == 4):
            return True
    return False


def port_collisions(binds: list[Bind]) -> list[tuple[str, str]]:
    """Two binds of one port that cannot both succeed, named at the later one.

    Listeners among themselves collide only on the exact same address (each
    is an SO_REUSEPORT group: ``0.0.0.0:443`` and ``127.0.0.1:443`` coexist,
    the more specific one taking its connections); anything else (the
    metrics endpoint, a daemon's metrics, the demo upstream) binds without
    SO_REUSEPORT and collides with every overlapping address.
    """
    out = []
    for k, later in enumerate(binds):
        if not later.port:
            continue  # port 0: the kernel picks a free one
        for earlier in binds[:k]:
            if earlier.port != later.port:
                continue
            if earlier.reuseport and later.reuseport:
                clash = _same_address(earlier.address, later.address)
            else:
                clash = _overlap(earlier.address, later.address)
            if clash:
                out.append((later.path, f"{later} collides with {earlier.path} ({earlier}): "
                                        "two sockets cannot bind one address and port"))
                break
    return out


def _same_address(a: str, b: str) -> bool:
    try:
        return ipaddress.ip_address(a) == ipaddress.ip_address(b)
    except ValueError:
        return a == b

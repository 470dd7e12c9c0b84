"""Who the client is: trusted hops (pure code, no I/O).

``listeners[].trusted_proxies`` names the load balancers and proxies in
front of a listener. Their word about the client is taken: a PROXY protocol
header is accepted only from them, and the forwarding headers they set are
kept (we append our hop). Anyone else's forwarding headers are replaced: a
client could otherwise claim any address.
"""
from __future__ import annotations

import functools
import ipaddress
from collections.abc import Sequence

from vcproxy.config import Network


@functools.lru_cache(maxsize=4096)
def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    # an IPv4 peer of a dual-stack ("::") socket shows as ::ffff:a.b.c.d
    mapped = getattr(address, "ipv4_mapped", None)
    return mapped or address


def is_trusted(host: str, networks: Sequence[Network]) -> bool:
    """Whether the peer ``host`` (an IP address string) is in one of ``networks``."""
    if not networks:
        return False
    address = _ip(host)
    return address is not None and any(address in n.network for n in networks)

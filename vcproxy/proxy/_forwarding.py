"""Who the client is: trusted hops (pure code, no I/O).

``listeners[].trusted_proxies`` names the load balancers and proxies in
front of a listener. Their word about the client is taken: a PROXY protocol
header is accepted only from them, and the forwarding headers they set are
kept (we append our hop). Anyone else's forwarding headers are replaced: a
client could otherwise claim any address. The same rule holds for the
request id (``X-Request-Id``): a trusted hop's is kept, anyone else's is
replaced by one of ours (``_http.request_id``), so the id an upstream and
the access log see was set by us or by a proxy we trust.
"""
from __future__ import annotations

import functools
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

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


# ---------------------------------------------------------------- forwarding headers

#: Request fields this module owns on the way up (the rest pass as they came).
FORWARDING_FIELDS = frozenset({b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"forwarded",
                               b"x-request-id"})

#: A request id we keep from a trusted hop: 1-128 visible ASCII characters
#: with no space, comma or quote (it is logged and sent on as one field value).
_REQUEST_ID_CHARS = frozenset(range(0x21, 0x7F)) - frozenset(b'",\\')
REQUEST_ID_MAX_BYTES = 128

_TCHAR = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _forwarded_value(value: bytes) -> bytes:
    """RFC 7239 §4: ``value = token / quoted-string``."""
    if value and all(c in _TCHAR for c in value):
        return value
    return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def forwarded_node(host: str) -> bytes:
    """The ``for=`` node of a client address (RFC 7239 §6: an IPv6 address is
    bracketed, and so quoted: ``for="[2001:db8::1]"``)."""
    address = _ip(host)
    if address is None:
        return _forwarded_value(host.encode())
    if address.version == 6:
        return b'"[' + address.compressed.encode() + b']"'
    return address.compressed.encode()


@dataclass(frozen=True)
class Forwarding:
    """One listener's forwarding policy (``listeners[].trusted_proxies``,
    ``forwarded``, ``via``); ``scheme`` is what X-Forwarded-Proto says."""

    scheme: str = "https"
    trusted_proxies: tuple[Network, ...] = ()
    forwarded: bool = False
    via: str | None = None
    #: ``listeners[].echo_request_id``: responses carry the request's X-Request-Id
    echo_request_id: bool = False

    def trusted_request_id(self, headers: list[tuple[bytes, bytes]], client_host: str) -> str | None:
        """The X-Request-Id a trusted peer sent (if well-formed), else None: the
        caller makes one (anyone else's is replaced, like X-Forwarded-For)."""
        if not self.trusted_proxies:
            return None
        for name, value in headers:
            if name == b"x-request-id":
                if (is_trusted(client_host, self.trusted_proxies) and 0 < len(value) <= REQUEST_ID_MAX_BYTES
                        and all(c in _REQUEST_ID_CHARS for c in value)):
                    return value.decode("ascii")
                return None
        return None

    def request_headers(self, headers: list[tuple[bytes, bytes]], client_host: str) -> list[tuple[bytes, bytes]]:
        """The forwarding fields for the upstream request of ``client_host``
        (``headers``: the client's, Host included), replacing every field of
        ``FORWARDING_FIELDS`` the client sent.

        A trusted peer's chain is kept and we append our hop; anyone else's is
        replaced, so X-Forwarded-For starts at the address we saw."""
        trusted = is_trusted(client_host, self.trusted_proxies)
        client = client_host.encode()
        out = []
        xff = _joined(headers, b"x-forwarded-for") if trusted else b""
        out.append((b"x-forwarded-for", xff + b", " + client if xff else client))
        proto = _joined(headers, b"x-forwarded-proto") if trusted else b""
        out.append((b"x-forwarded-proto", proto or self.scheme.encode()))
        host = (_joined(headers, b"x-forwarded-host") if trusted else b"") or _joined(headers, b"host")
        if host:
            out.append((b"x-forwarded-host", host))
        earlier = _joined(headers, b"forwarded") if trusted else b""
        if self.forwarded:
            # RFC 7239 §4: "Forwarded: for=192.0.2.43;proto=https;host=example.com";
            # a proxy appends its element to the list it received (§4: "a comma-separated list").
            element = b"for=" + forwarded_node(client_host) + b";proto=" + self.scheme.encode()
            client_host_header = _joined(headers, b"host")
            if client_host_header:
                element += b";host=" + _forwarded_value(client_host_header)
            out.append((b"forwarded", earlier + b", " + element if earlier else element))
        elif earlier:
            out.append((b"forwarded", earlier))
        if self.via is not None:
            out.append((b"via", self.via_value(headers)))
        return out

    def response_headers(self, headers: list[tuple[bytes, bytes]],
                         request_id: str | None = None) -> list[tuple[bytes, bytes]]:
        """A response's fields with our ``Via`` hop appended (when ``via`` is set)
        and the request id (when ``echo_request_id``: ours replaces the
        upstream's), for HTTP/1.1 and HTTP/2 responses alike."""
        if self.via is None and not self.echo_request_id:
            return headers
        if self.via is not None:
            headers = [h for h in headers if h[0] != b"via"] + [(b"via", self.via_value(headers))]
        if self.echo_request_id and request_id is not None:
            headers = [h for h in headers if h[0] != b"x-request-id"] + [(b"x-request-id", request_id.encode())]
        return headers

    def via_value(self, headers: list[tuple[bytes, bytes]]) -> bytes:
        """RFC 9110 §7.6.3: each intermediary appends ``received-protocol received-by``."""
        earlier = _joined(headers, b"via")
        ours = b"1.1 " + (self.via or "").encode()
        return earlier + b", " + ours if earlier else ours


def _joined(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes:
    return b", ".join(v for n, v in headers if n == name)

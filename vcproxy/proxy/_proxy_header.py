"""The PROXY protocol header, versions 1 and 2 (HAProxy's proxy-protocol.txt): sans-IO codec.

A TCP load balancer in front of vcproxy opens each connection with one
header naming the client it accepted; a listener with
``proxy_protocol: true`` requires it (and only from ``trusted_proxies``).
An upstream with ``send_proxy_protocol`` gets one from us. This module is the
codec only: bytes in, ``ProxyHeader`` out, or the reverse. No sockets.

``parse_proxy_header(data)`` looks at the bytes received so far and returns

- ``None``: a valid prefix of a header, more bytes are needed;
- ``(ProxyHeader, consumed)``: a whole header; ``data[consumed:]`` is the
  first bytes of the proxied stream (a TLS ClientHello, usually);
- or raises ``ProxyProtocolError``: this is not a PROXY header, or a broken
  one. The spec leaves no room for guessing: "the receiver MUST be
  configured to only receive the protocol described in this specification
  and MUST not try to guess whether the protocol header is present or not".

Version 1 (text), at most 107 bytes with the CRLF::

    "PROXY" SP ("TCP4" | "TCP6") SP src-addr SP dst-addr SP src-port SP dst-port CRLF
    "PROXY" SP "UNKNOWN" [anything up to CRLF] CRLF

Version 2 (binary)::

    bytes 0..11   signature  \\x0D\\x0A\\x0D\\x0A\\x00\\x0D\\x0A\\x51\\x55\\x49\\x54\\x0A
    byte  12      version (high nibble, 0x2) | command (low nibble: 0x0 LOCAL, 0x1 PROXY)
    byte  13      family (high nibble: 0 UNSPEC, 1 INET, 2 INET6, 3 UNIX)
                  | transport (low nibble: 0 UNSPEC, 1 STREAM, 2 DGRAM)
    bytes 14..15  length of what follows, network order
    then          INET: src(4) dst(4) src_port(2) dst_port(2)        (12 bytes)
                  INET6: src(16) dst(16) src_port(2) dst_port(2)     (36 bytes)
                  UNIX: src(108) dst(108)                            (216 bytes)
                  then TLVs to the end: type(1) length(2) value, kept raw

A LOCAL command (a health check from the balancer itself), ``UNKNOWN``, and
families we do not carry (UNSPEC, UNIX) leave ``source`` as ``None``: the
connection's own addresses stand ("the receiver MUST accept this connection
as valid and MUST use the real connection endpoints").
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Literal

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_PREFIX = b"PROXY "
#: "a receiver ... will never need to read more than 107 bytes" (spec §2.1)
V1_MAX_BYTES = 107
V2_HEADER_BYTES = 16
_V2_FAMILY_ADDRESS_BYTES = {0x1: 12, 0x2: 36, 0x3: 216}

Address = tuple[str, int]


class ProxyProtocolError(Exception):
    """The peer sent no valid PROXY protocol header."""


@dataclass(frozen=True)
class ProxyHeader:
    version: Literal[1, 2]
    command: Literal["proxy", "local"]
    #: the original client and the address it connected to; ``None``: use the connection's own
    source: Address | None
    destination: Address | None
    tlvs: tuple[tuple[int, bytes], ...] = ()


def parse_proxy_header(data: bytes) -> tuple[ProxyHeader, int] | None:
    if not data:
        return None
    # The two versions differ from the first byte: "\r" (v2) or "P" (v1).
    prefix = V2_SIGNATURE if data[:1] == b"\r" else V1_PREFIX
    n = min(len(data), len(prefix))
    if data[:n] != prefix[:n]:
        raise ProxyProtocolError(f"not a PROXY protocol header (starts {bytes(data[:12])!r})")
    return _parse_v2(data) if prefix is V2_SIGNATURE else _parse_v1(data)


def _parse_v1(data: bytes) -> tuple[ProxyHeader, int] | None:
    end = data.find(b"\r\n", 0, V1_MAX_BYTES)
    if end < 0:
        if len(data) >= V1_MAX_BYTES:
            raise ProxyProtocolError(f"v1 header: no CRLF within {V1_MAX_BYTES} bytes")
        if b"\n" in data:
            raise ProxyProtocolError("v1 header: a line feed without carriage return")
        return None
    line = bytes(data[:end])
    parts = line.split(b" ")
    if len(parts) >= 2 and parts[1] == b"UNKNOWN":
        # "the receiver must ignore anything presented before the CRLF is found"
        return ProxyHeader(1, "proxy", None, None), end + 2
    if len(parts) != 6 or parts[1] not in (b"TCP4", b"TCP6"):
        raise ProxyProtocolError(f"v1 header: expected 'PROXY TCP4|TCP6 src dst sport dport', got {line!r}")
    version = 4 if parts[1] == b"TCP4" else 6
    src, dst = _v1_address(parts[2], version), _v1_address(parts[3], version)
    return ProxyHeader(1, "proxy", (src, _v1_port(parts[4])), (dst, _v1_port(parts[5]))), end + 2


def _v1_address(text: bytes, version: int) -> str:
    try:
        address = ipaddress.ip_address(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProxyProtocolError(f"v1 header: bad address {text!r}") from exc
    if address.version != version:
        raise ProxyProtocolError(f"v1 header: {text!r} is not an IPv{version} address")
    return address.compressed


def _v1_port(text: bytes) -> int:
    # "... a decimal integer between 0 and 65535 inclusive", no sign, no leading zero
    if not text.isdigit() or (len(text) > 1 and text[:1] == b"0") or int(text) > 65535:
        raise ProxyProtocolError(f"v1 header: bad port {text!r}")
    return int(text)


def _parse_v2(data: bytes) -> tuple[ProxyHeader, int] | None:
    if len(data) < V2_HEADER_BYTES:
        return None
    ver_cmd, fam = data[12], data[13]
    if ver_cmd >> 4 != 0x2:
        raise ProxyProtocolError(f"v2 header: version {ver_cmd >> 4}, expected 2")
    command = ver_cmd & 0x0F
    if command not in (0x0, 0x1):
        # "Other values are unassigned and must not be emitted by senders.
        # Receivers must drop connections presenting unexpected values here."
        raise ProxyProtocolError(f"v2 header: unknown command {command:#x}")
    family, transport = fam >> 4, fam & 0x0F
    if family > 0x3 or transport > 0x2:
        raise ProxyProtocolError(f"v2 header: unknown family/transport byte {fam:#04x}")
    length = int.from_bytes(data[14:16], "big")
    total = V2_HEADER_BYTES + length
    if len(data) < total:
        return None
    body = bytes(data[V2_HEADER_BYTES:total])
    need = _V2_FAMILY_ADDRESS_BYTES.get(family, 0)
    if len(body) < need:
        raise ProxyProtocolError(f"v2 header: {len(body)} address bytes, family {family} needs {need}")
    tlvs = _parse_tlvs(body[need:])
    if command == 0x0 or family in (0x0, 0x3) or transport != 0x1:
        # LOCAL, UNSPEC, UNIX, or not a stream: the real connection endpoints stand
        return ProxyHeader(2, "local" if command == 0x0 else "proxy", None, None, tlvs), total
    size = 4 if family == 0x1 else 16
    src = ipaddress.ip_address(body[:size]).compressed
    dst = ipaddress.ip_address(body[size:2 * size]).compressed
    ports = body[2 * size:2 * size + 4]
    source = (src, int.from_bytes(ports[:2], "big"))
    destination = (dst, int.from_bytes(ports[2:], "big"))
    return ProxyHeader(2, "proxy", source, destination, tlvs), total


def _parse_tlvs(rest: bytes) -> tuple[tuple[int, bytes], ...]:
    out = []
    i = 0
    while i < len(rest):
        if len(rest) - i < 3:
            raise ProxyProtocolError("v2 header: truncated TLV")
        kind, size = rest[i], int.from_bytes(rest[i + 1:i + 3], "big")
        if i + 3 + size > len(rest):
            raise ProxyProtocolError(f"v2 header: TLV {kind:#04x} of {size} bytes overruns the header")
        out.append((kind, rest[i + 3:i + 3 + size]))
        i += 3 + size
    return tuple(out)


# ---------------------------------------------------------------- encoding

def _same_family(source: Address, destination: Address) -> tuple[ipaddress._BaseAddress, ipaddress._BaseAddress]:
    """Both addresses in one family (an IPv4 one mapped into IPv6 if they differ)."""
    src, dst = ipaddress.ip_address(source[0]), ipaddress.ip_address(destination[0])
    if src.version != dst.version:
        src, dst = (ipaddress.IPv6Address(f"::ffff:{a}") if a.version == 4 else a for a in (src, dst))
    return src, dst


def encode_v1(source: Address, destination: Address) -> bytes:
    src, dst = _same_family(source, destination)
    proto = "TCP4" if src.version == 4 else "TCP6"
    return f"PROXY {proto} {src.compressed} {dst.compressed} {source[1]} {destination[1]}\r\n".encode("ascii")


def encode_v2(source: Address, destination: Address) -> bytes:
    src, dst = _same_family(source, destination)
    family = 0x1 if src.version == 4 else 0x2
    body = src.packed + dst.packed + source[1].to_bytes(2, "big") + destination[1].to_bytes(2, "big")
    return V2_SIGNATURE + bytes([0x21, (family << 4) | 0x1]) + len(body).to_bytes(2, "big") + body


def encode(version: Literal["v1", "v2"], source: Address, destination: Address) -> bytes:
    return encode_v1(source, destination) if version == "v1" else encode_v2(source, destination)


def encode_local(version: Literal["v1", "v2"]) -> bytes:
    """A header that names no client: v1 ``UNKNOWN``, v2 ``LOCAL`` (the receiver
    uses the connection's own addresses), for connections of our own."""
    if version == "v1":
        return b"PROXY UNKNOWN\r\n"
    return V2_SIGNATURE + bytes([0x20, 0x00, 0, 0])

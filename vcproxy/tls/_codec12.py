"""TLS 1.2 wire formats the server needs beyond the shared ClientHello codec
(RFC 5246 §7.4, RFC 8422 §5, RFC 5077 §3, RFC 5746 §3.2, RFC 7627 §5.1).

The ClientHello itself is parsed by ``_codec.parse_client_hello`` (one codec
for both versions); ``hello12_extensions`` then reads the extensions only TLS
1.2 uses from its raw extension list. Parsing raises ``DecodeError`` (or the
alert the RFC names) on anything malformed; builders concatenate.
"""
from __future__ import annotations

import dataclasses

from ._codec import ClientHello, handshake, vec8, vec16, vec24
from ._errors import DecodeError, HandshakeFailure, IllegalParameter

# HandshakeType (RFC 5246 §7.4)
HELLO_REQUEST = 0
SERVER_KEY_EXCHANGE = 12
SERVER_HELLO_DONE = 14
CLIENT_KEY_EXCHANGE = 16

# ExtensionType
EXT_EC_POINT_FORMATS = 11
EXT_EXTENDED_MASTER_SECRET = 23
EXT_SESSION_TICKET = 35
EXT_RENEGOTIATION_INFO = 0xFF01

# Signalling cipher suite values
TLS_EMPTY_RENEGOTIATION_INFO_SCSV = 0x00FF   # RFC 5746 §3.3
TLS_FALLBACK_SCSV = 0x5600                   # RFC 7507 §2

#: RFC 8446 §4.1.3: the last 8 bytes of ServerHello.random of a TLS 1.3
#: server that negotiates TLS 1.2.
DOWNGRADE_TLS12 = bytes.fromhex("444f574e47524401")

_CURVE_TYPE_NAMED = 3
_POINT_UNCOMPRESSED = 0

@dataclasses.dataclass(frozen=True, slots=True)
class Hello12Extensions:
    """What a ClientHello says in the extensions (and SCSVs) only TLS 1.2 reads."""

    extended_master_secret: bool
    #: Secure renegotiation signalled (the extension or the SCSV, RFC 5746 §3.6).
    secure_renegotiation: bool
    #: The session_ticket extension's content: None = absent, b"" = "send me one".
    session_ticket: bytes | None
    fallback_scsv: bool
    #: The client sent ec_point_formats (RFC 8422 §5.2: the ServerHello answers it).
    ec_point_formats: bool = False


def hello12_extensions(ch: ClientHello) -> Hello12Extensions:
    ems = point_formats = False
    reneg = TLS_EMPTY_RENEGOTIATION_INFO_SCSV in ch.cipher_suites
    ticket = None
    for ext_type, data in ch.extensions:
        if ext_type == EXT_EXTENDED_MASTER_SECRET:
            if data:  # RFC 7627 §5.1: extension_data is empty
                raise DecodeError(f"extended_master_secret: {len(data)} bytes, expected 0")
            ems = True
        elif ext_type == EXT_RENEGOTIATION_INFO:
            if not data or data[0] != len(data) - 1:
                raise DecodeError("renegotiation_info: bad renegotiated_connection length")
            if data[0]:
                # RFC 5746 §3.6: on an initial handshake it must be empty.
                raise HandshakeFailure("renegotiation_info not empty on the initial handshake")
            reneg = True
        elif ext_type == EXT_SESSION_TICKET:
            ticket = bytes(data)
        elif ext_type == EXT_EC_POINT_FORMATS:
            if not data or data[0] != len(data) - 1:
                raise DecodeError("ec_point_formats: bad ec_point_format_list length")
            if _POINT_UNCOMPRESSED not in data[1:]:
                # RFC 8422 §5.1.2: the uncompressed format MUST be supported.
                raise IllegalParameter("ec_point_formats without uncompressed")
            point_formats = True
    return Hello12Extensions(ems, reneg, ticket, TLS_FALLBACK_SCSV in ch.cipher_suites,
                             point_formats)


def parse_client_key_exchange(message: bytes) -> bytes:
    """ClientKeyExchange (ECDHE, RFC 8422 §5.7): the client's ECPoint ``<1..2^8-1>``."""
    n = len(message)
    if n < 5 or message[0] != CLIENT_KEY_EXCHANGE or int.from_bytes(message[1:4], "big") != n - 4:
        raise DecodeError("ClientKeyExchange: bad handshake header")
    point_len = message[4]
    if point_len == 0 or point_len != n - 5:
        raise DecodeError(f"ClientKeyExchange: point of {point_len} bytes in {n - 5}")
    return bytes(message[5:])


def server_key_exchange_params(group_id: int, public: bytes) -> bytes:
    """ServerECDHParams: curve_type named_curve, the group, our point (RFC 8422 §5.4)."""
    return bytes((_CURVE_TYPE_NAMED,)) + group_id.to_bytes(2, "big") + vec8(public)


def server_key_exchange(params: bytes, scheme_id: int, signature: bytes) -> bytes:
    # RFC 5246 §7.4.3 with §7.4.1.4.1: digitally-signed = SignatureAndHashAlgorithm + vec16.
    return handshake(SERVER_KEY_EXCHANGE, params + scheme_id.to_bytes(2, "big") + vec16(signature))


SERVER_HELLO_DONE_MESSAGE = handshake(SERVER_HELLO_DONE, b"")


def certificate12(chain_der: tuple[bytes, ...]) -> bytes:
    """RFC 5246 §7.4.2: certificate_list<0..2^24-1> of ASN.1Cert<1..2^24-1>."""
    from ._codec import CERTIFICATE
    return handshake(CERTIFICATE, vec24(b"".join(vec24(der) for der in chain_der)))


def new_session_ticket12(lifetime_hint_s: int, ticket: bytes) -> bytes:
    """RFC 5077 §3.3: ticket_lifetime_hint(4) || ticket<0..2^16-1>."""
    from ._codec import NEW_SESSION_TICKET
    return handshake(NEW_SESSION_TICKET, lifetime_hint_s.to_bytes(4, "big") + vec16(ticket))


def server_hello_extensions(*, ems: bool, secure_renegotiation: bool, ticket: bool,
                            alpn: str | None, sni_matched: bool,
                            ec_point_formats: bool = False) -> bytes:
    from ._codec import EXT_ALPN, EXT_SERVER_NAME, extension

    exts = b""
    if secure_renegotiation:
        exts += extension(EXT_RENEGOTIATION_INFO, b"\x00")  # empty renegotiated_connection
    if ems:
        exts += extension(EXT_EXTENDED_MASTER_SECRET, b"")
    if ticket:
        exts += extension(EXT_SESSION_TICKET, b"")  # RFC 5077 §3.2: a NewSessionTicket follows
    if ec_point_formats:
        exts += extension(EXT_EC_POINT_FORMATS, b"\x01\x00")  # [uncompressed]
    if sni_matched:
        exts += extension(EXT_SERVER_NAME, b"")
    if alpn is not None:
        exts += extension(EXT_ALPN, vec16(vec8(alpn.encode())))
    return exts

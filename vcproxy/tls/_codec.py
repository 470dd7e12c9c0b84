"""TLS 1.3 wire formats: handshake messages and extensions (RFC 8446 §4).

Parsing reads through ``Reader``, a length-checked cursor over one block:
every ``uN``/``take``/``vec`` call checks bounds and raises ``DecodeError``
(alert decode_error) on truncation, and ``Reader.end()`` rejects trailing
bytes. Nested length-prefixed blocks are plain sub-``Reader``s — no context
manager per field (the ~43 ``contextlib`` calls per handshake that made
aioquic's codec slow, see ``notes/tls-costs.md``).

Serialising builds messages by concatenation with ``vec8``/``vec16``/
``vec24`` helpers. Unknown extensions are kept raw in ``extensions``; known
ones are also parsed into typed fields of ``ClientHello``. Every message we
parse re-serialises byte for byte (``ClientHello.serialize``; tested with RFC
8448 vectors).
"""
from __future__ import annotations

import dataclasses
import struct

from ._errors import DecodeError, IllegalParameter

# HandshakeType (RFC 8446 §4)
CLIENT_HELLO = 1
SERVER_HELLO = 2
NEW_SESSION_TICKET = 4
END_OF_EARLY_DATA = 5
ENCRYPTED_EXTENSIONS = 8
CERTIFICATE = 11
CERTIFICATE_REQUEST = 13
CERTIFICATE_VERIFY = 15
FINISHED = 20
KEY_UPDATE = 24
MESSAGE_HASH = 254

HANDSHAKE_NAMES = {1: "ClientHello", 2: "ServerHello", 4: "NewSessionTicket",
                   5: "EndOfEarlyData", 8: "EncryptedExtensions", 11: "Certificate",
                   13: "CertificateRequest", 15: "CertificateVerify", 20: "Finished",
                   24: "KeyUpdate", 254: "message_hash",
                   # TLS 1.2 only (RFC 5246 §7.4; formats in _codec12)
                   0: "HelloRequest", 12: "ServerKeyExchange", 14: "ServerHelloDone",
                   16: "ClientKeyExchange"}

# ExtensionType
EXT_SERVER_NAME = 0
EXT_SUPPORTED_GROUPS = 10
EXT_SIGNATURE_ALGORITHMS = 13
EXT_ALPN = 16
EXT_RECORD_SIZE_LIMIT = 28
EXT_PRE_SHARED_KEY = 41
EXT_EARLY_DATA = 42
EXT_SUPPORTED_VERSIONS = 43
EXT_COOKIE = 44
EXT_PSK_KEY_EXCHANGE_MODES = 45
EXT_KEY_SHARE = 51

TLS13 = 0x0304
TLS12 = 0x0303
PSK_DHE_KE = 1

GROUP_IDS = {"x25519": 0x001D, "secp256r1": 0x0017, "secp384r1": 0x0018,
             # draft-ietf-tls-ecdhe-mlkem (IANA TLS Supported Groups)
             "X25519MLKEM768": 0x11EC, "SecP256r1MLKEM768": 0x11EB}
GROUP_NAMES = {v: k for k, v in GROUP_IDS.items()}
SCHEME_IDS = {
    "ecdsa_secp256r1_sha256": 0x0403, "ecdsa_secp384r1_sha384": 0x0503,
    "rsa_pss_rsae_sha256": 0x0804, "rsa_pss_rsae_sha384": 0x0805,
    "rsa_pss_rsae_sha512": 0x0806, "ed25519": 0x0807,
    "rsa_pkcs1_sha256": 0x0401, "rsa_pkcs1_sha384": 0x0501, "rsa_pkcs1_sha512": 0x0601,
}
SCHEME_NAMES = {v: k for k, v in SCHEME_IDS.items()}

#: RFC 8446 §4.1.3: a ServerHello with this random is a HelloRetryRequest.
HRR_RANDOM = bytes.fromhex("cf21ad74e59a6111be1d8c021e65b891c2a211167abb8c5e079e09e2c8a8339c")


class Reader:
    """A bounds-checked cursor over ``data[pos:end]``."""

    __slots__ = ("data", "pos", "end_pos")

    def __init__(self, data: bytes, pos: int = 0, end: int | None = None):
        self.data = data
        self.pos = pos
        self.end_pos = len(data) if end is None else end

    def _need(self, n: int, what: str) -> int:
        pos = self.pos
        if pos + n > self.end_pos:
            raise DecodeError(f"{what}: need {n} bytes, {self.end_pos - pos} left")
        self.pos = pos + n
        return pos

    def u8(self, what: str = "u8") -> int:
        return self.data[self._need(1, what)]

    def u16(self, what: str = "u16") -> int:
        p = self._need(2, what)
        d = self.data
        return (d[p] << 8) | d[p + 1]

    def u24(self, what: str = "u24") -> int:
        p = self._need(3, what)
        d = self.data
        return (d[p] << 16) | (d[p + 1] << 8) | d[p + 2]

    def u32(self, what: str = "u32") -> int:
        p = self._need(4, what)
        return int.from_bytes(self.data[p:p + 4], "big")

    def take(self, n: int, what: str = "bytes") -> bytes:
        p = self._need(n, what)
        return bytes(self.data[p:p + n])

    def _len(self, width: int, what: str) -> int:
        return self.u8(what) if width == 1 else self.u16(what) if width == 2 else self.u24(what)

    def vec(self, width: int, what: str, minimum: int = 0) -> bytes:
        """An opaque vector with a ``width``-byte length prefix."""
        n = self._len(width, what)
        if n < minimum:
            raise DecodeError(f"{what}: length {n} below minimum {minimum}")
        return self.take(n, what)

    def sub(self, width: int, what: str, minimum: int = 0) -> Reader:
        """A nested block with a ``width``-byte length prefix, as its own Reader."""
        n = self._len(width, what)
        if n < minimum:
            raise DecodeError(f"{what}: length {n} below minimum {minimum}")
        start = self._need(n, what)
        return Reader(self.data, start, start + n)

    def left(self) -> int:
        return self.end_pos - self.pos

    def end(self, what: str) -> None:
        if self.pos != self.end_pos:
            raise DecodeError(f"{what}: {self.end_pos - self.pos} trailing bytes")


def vec8(b: bytes) -> bytes:
    return bytes((len(b),)) + b


def vec16(b: bytes) -> bytes:
    return len(b).to_bytes(2, "big") + b


def vec24(b: bytes) -> bytes:
    return len(b).to_bytes(3, "big") + b


def handshake(msg_type: int, body: bytes) -> bytes:
    """Frame a handshake message: type(1) || length(3) || body."""
    return bytes((msg_type,)) + len(body).to_bytes(3, "big") + body


def extension(ext_type: int, data: bytes) -> bytes:
    return ext_type.to_bytes(2, "big") + vec16(data)


@dataclasses.dataclass(slots=True)
class OfferedPsks:
    identities: list[tuple[bytes, int]]   # (identity, obfuscated_ticket_age)
    binders: list[bytes]
    #: Length of the ClientHello prefix covered by binders (RFC 8446 §4.2.11.2):
    #: everything up to, not including, the binders list.
    truncated_len: int


@dataclasses.dataclass(slots=True)
class ClientHello:
    raw: bytes                              # the whole message, header included
    legacy_version: int
    random: bytes
    session_id: bytes
    cipher_suites: tuple[int, ...]
    compression_methods: bytes
    extensions: list[tuple[int, bytes]]     # raw, in order
    server_name: str | None = None
    supported_versions: tuple[int, ...] | None = None
    groups: tuple[int, ...] | None = None
    signature_algorithms: tuple[int, ...] | None = None
    key_shares: list[tuple[int, bytes]] | None = None
    alpn: list[bytes] | None = None
    psk_modes: bytes | None = None
    psks: OfferedPsks | None = None
    early_data: bool = False
    cookie: bytes | None = None
    record_size_limit: int | None = None

    def has(self, ext_type: int) -> bool:
        return any(t == ext_type for t, _ in self.extensions)

    def serialize(self) -> bytes:
        body = (self.legacy_version.to_bytes(2, "big") + self.random + vec8(self.session_id)
                + vec16(b"".join(s.to_bytes(2, "big") for s in self.cipher_suites))
                + vec8(self.compression_methods))
        if self.extensions or len(self.raw) > 4 + len(body):
            body += vec16(b"".join(extension(t, d) for t, d in self.extensions))
        return handshake(CLIENT_HELLO, body)


def parse_client_hello(raw: bytes) -> ClientHello:
    """Parse a whole ClientHello message (4-byte header included).

    The extension loop indexes ``raw`` directly (it is the hot path of every
    handshake); each known extension is parsed from its own bytes.
    """
    n = len(raw)
    if n < 4 or raw[0] != CLIENT_HELLO or int.from_bytes(raw[1:4], "big") != n - 4:
        raise DecodeError("ClientHello: bad handshake header")
    # Fixed fields by direct indexing, each length checked before use (a
    # Reader call per field cost more than the rest of the parse).
    if n < 4 + 2 + 32 + 1:
        raise DecodeError("ClientHello: truncated before legacy_session_id")
    legacy_version = (raw[4] << 8) | raw[5]
    random = raw[6:38]
    pos = 39 + raw[38]
    if raw[38] > 32:
        raise DecodeError(f"ClientHello.legacy_session_id: {raw[38]} bytes > 32")
    if pos + 2 > n:
        raise DecodeError("ClientHello.legacy_session_id: truncated")
    session_id = raw[39:pos]
    end = pos + 2 + ((raw[pos] << 8) | raw[pos + 1])
    if end > n:
        raise DecodeError("ClientHello.cipher_suites: truncated")
    suites = _u16_vector(raw[pos + 2:end], 0, "ClientHello.cipher_suites")
    pos = end
    if pos >= n or raw[pos] == 0:
        raise DecodeError("ClientHello.legacy_compression_methods: truncated or empty")
    end = pos + 1 + raw[pos]
    if end > n:
        raise DecodeError("ClientHello.legacy_compression_methods: truncated")
    compression = raw[pos + 1:end]
    ch = ClientHello(raw, legacy_version, random, session_id, suites, compression, [])
    if end == n:
        return ch  # pre-TLS-1.2 hello without extensions: caught as protocol_version
    if end + 2 > n:
        raise DecodeError("ClientHello.extensions: truncated length")
    pos = end + 2
    end = pos + ((raw[end] << 8) | raw[end + 1])
    if end != n:
        raise DecodeError(f"ClientHello.extensions: block ends at {end}, message at {n}")
    seen: set[int] = set()
    exts = ch.extensions
    while pos < end:
        if pos + 4 > end:
            raise DecodeError("ClientHello: truncated extension header")
        ext_type = (raw[pos] << 8) | raw[pos + 1]
        start = pos + 4
        pos = start + ((raw[pos + 2] << 8) | raw[pos + 3])
        if pos > end:
            raise DecodeError(f"extension {ext_type}: length runs past the extensions block")
        if ext_type in seen:
            # RFC 8446 §4.2: no more than one extension of the same type.
            raise IllegalParameter(f"ClientHello: duplicate extension {ext_type}")
        seen.add(ext_type)
        data = raw[start:pos]
        exts.append((ext_type, data))
        parse = _CH_EXTENSION_PARSERS.get(ext_type)
        if parse is not None:
            if ext_type == EXT_PRE_SHARED_KEY and pos != end:
                # RFC 8446 §4.2.11: pre_shared_key MUST be the last extension.
                raise IllegalParameter("ClientHello: pre_shared_key is not the last extension")
            parse(ch, data, start)
    return ch


def _u16_vector(data: bytes, prefix: int, what: str) -> tuple[int, ...]:
    """A vector of u16 with a ``prefix``-byte length (0: ``data`` is the body)."""
    if prefix:
        if len(data) < prefix:
            raise DecodeError(f"{what}: truncated length")
        n = int.from_bytes(data[:prefix], "big")
        if n != len(data) - prefix:
            raise DecodeError(f"{what}: length {n}, {len(data) - prefix} bytes present")
        data = data[prefix:]
    n = len(data)
    if n == 0 or n % 2:
        raise DecodeError(f"{what}: bad length {n}")
    unpack = _U16_UNPACK.get(n)
    if unpack is None:
        unpack = struct.Struct(f">{n // 2}H").unpack
        if n <= 256:  # the usual sizes only: a peer cannot grow the cache
            _U16_UNPACK[n] = unpack
    return unpack(data)


#: Compiled unpackers by byte length (a format string per call cost ~0.5 µs).
_U16_UNPACK: dict[int, object] = {}


def _ext_server_name(ch: ClientHello, data: bytes, offset: int) -> None:
    n = len(data)
    if n < 2 or (data[0] << 8 | data[1]) != n - 2 or n < 5:
        raise DecodeError("server_name: bad server_name_list length")
    pos = 2
    while pos < n:
        if pos + 3 > n:
            raise DecodeError("server_name: truncated entry")
        name_type = data[pos]
        end = pos + 3 + (data[pos + 1] << 8 | data[pos + 2])
        if end > n or end == pos + 3:
            raise DecodeError("server_name: bad host_name length")
        if name_type == 0:
            if ch.server_name is not None:
                raise IllegalParameter("server_name: more than one host_name")
            try:
                ch.server_name = data[pos + 3:end].decode("ascii")
            except UnicodeDecodeError:
                raise DecodeError("server_name: host_name is not ASCII") from None
        pos = end


def _ext_groups(ch: ClientHello, data: bytes, offset: int) -> None:
    ch.groups = _u16_vector(data, 2, "supported_groups")


def _ext_signature_algorithms(ch: ClientHello, data: bytes, offset: int) -> None:
    ch.signature_algorithms = _u16_vector(data, 2, "signature_algorithms")


def _ext_supported_versions(ch: ClientHello, data: bytes, offset: int) -> None:
    ch.supported_versions = _u16_vector(data, 1, "supported_versions")


def _ext_key_share(ch: ClientHello, data: bytes, offset: int) -> None:
    n = len(data)
    if n < 2 or (data[0] << 8 | data[1]) != n - 2:
        raise DecodeError("key_share: client_shares length does not match")
    shares = ch.key_shares = []
    pos = 2
    while pos < n:
        if pos + 4 > n:
            raise DecodeError("key_share: truncated entry")
        end = pos + 4 + (data[pos + 2] << 8 | data[pos + 3])
        if end > n:
            raise DecodeError("key_share: bad key_exchange length")
        # (An empty key_exchange is kept: for a group we implement it is an
        # invalid share, illegal_parameter (RFC 8446 §4.2.8); for one we do
        # not know it is ignored with the rest of the entry.)
        shares.append((data[pos] << 8 | data[pos + 1], data[pos + 4:end]))
        pos = end


def _ext_alpn(ch: ClientHello, data: bytes, offset: int) -> None:
    n = len(data)
    if n < 4 or (data[0] << 8 | data[1]) != n - 2:
        raise DecodeError("alpn: protocol_name_list length does not match")
    protos = ch.alpn = []
    pos = 2
    while pos < n:
        end = pos + 1 + data[pos]
        if end > n or end == pos + 1:
            raise DecodeError("alpn: bad protocol_name length")
        protos.append(data[pos + 1:end])
        pos = end


def _ext_psk_modes(ch: ClientHello, data: bytes, offset: int) -> None:
    # (indexed directly: a Reader here cost more than the rest of the extension loop)
    if not data or data[0] < 1 or data[0] != len(data) - 1:
        raise DecodeError("psk_key_exchange_modes: bad ke_modes length")
    ch.psk_modes = data[1:]


def _ext_early_data(ch: ClientHello, data: bytes, offset: int) -> None:
    if data:
        raise DecodeError("early_data: ClientHello form must be empty")
    ch.early_data = True


def _ext_cookie(ch: ClientHello, data: bytes, offset: int) -> None:
    r = Reader(data)
    ch.cookie = r.vec(2, "cookie", 1)
    r.end("cookie")


def _ext_record_size_limit(ch: ClientHello, data: bytes, offset: int) -> None:
    if len(data) != 2:
        raise DecodeError(f"record_size_limit: {len(data)} bytes, expected 2")
    ch.record_size_limit = (data[0] << 8) | data[1]


def _ext_pre_shared_key(ch: ClientHello, data: bytes, offset: int) -> None:
    r = Reader(data)
    ids_r = r.sub(2, "pre_shared_key.identities", 7)
    identities = []
    while ids_r.left():
        identity = ids_r.vec(2, "pre_shared_key.identity", 1)
        identities.append((identity, ids_r.u32("obfuscated_ticket_age")))
    truncated_len = offset + r.pos
    binders_r = r.sub(2, "pre_shared_key.binders", 33)
    r.end("pre_shared_key")
    binders = []
    while binders_r.left():
        binders.append(binders_r.vec(1, "pre_shared_key.binder", 32))
    if len(binders) != len(identities):
        raise IllegalParameter(f"pre_shared_key: {len(identities)} identities but "
                               f"{len(binders)} binders")
    ch.psks = OfferedPsks(identities, binders, truncated_len)


_CH_EXTENSION_PARSERS = {
    EXT_SERVER_NAME: _ext_server_name,
    EXT_SUPPORTED_GROUPS: _ext_groups,
    EXT_SIGNATURE_ALGORITHMS: _ext_signature_algorithms,
    EXT_SUPPORTED_VERSIONS: _ext_supported_versions,
    EXT_KEY_SHARE: _ext_key_share,
    EXT_ALPN: _ext_alpn,
    EXT_PSK_KEY_EXCHANGE_MODES: _ext_psk_modes,
    EXT_EARLY_DATA: _ext_early_data,
    EXT_COOKIE: _ext_cookie,
    EXT_RECORD_SIZE_LIMIT: _ext_record_size_limit,
    EXT_PRE_SHARED_KEY: _ext_pre_shared_key,
}


def parse_finished(body: bytes, hash_len: int) -> bytes:
    if len(body) != hash_len:
        raise DecodeError(f"Finished: verify_data of {len(body)} bytes, expected {hash_len}")
    return body


def parse_key_update(body: bytes) -> bool:
    """True when the peer requests that we update our sending keys too."""
    if len(body) != 1:
        raise DecodeError(f"KeyUpdate: body of {len(body)} bytes, expected 1")
    if body[0] > 1:
        raise IllegalParameter(f"KeyUpdate: request_update {body[0]} is not 0 or 1")
    return body[0] == 1


# ---- messages the server sends -------------------------------------------

def server_hello(random: bytes, session_id: bytes, suite_id: int, extensions: bytes) -> bytes:
    body = (b"\x03\x03" + random + vec8(session_id) + suite_id.to_bytes(2, "big") + b"\x00"
            + vec16(extensions))
    return handshake(SERVER_HELLO, body)


def ext_key_share_server(group_id: int, public: bytes) -> bytes:
    return extension(EXT_KEY_SHARE, group_id.to_bytes(2, "big") + vec16(public))


EXT_SUPPORTED_VERSIONS_TLS13 = extension(EXT_SUPPORTED_VERSIONS, TLS13.to_bytes(2, "big"))


def encrypted_extensions(extensions: bytes) -> bytes:
    return handshake(ENCRYPTED_EXTENSIONS, vec16(extensions))


def certificate(chain_der: tuple[bytes, ...]) -> bytes:
    """Certificate with an empty request context and no per-entry extensions."""
    entries = b"".join(vec24(der) + b"\x00\x00" for der in chain_der)
    return handshake(CERTIFICATE, b"\x00" + vec24(entries))


def certificate_verify(scheme_id: int, signature: bytes) -> bytes:
    return handshake(CERTIFICATE_VERIFY, scheme_id.to_bytes(2, "big") + vec16(signature))


def finished(verify_data: bytes) -> bytes:
    return handshake(FINISHED, verify_data)


def new_session_ticket(lifetime_s: int, age_add: int, nonce: bytes, ticket: bytes) -> bytes:
    body = (lifetime_s.to_bytes(4, "big") + age_add.to_bytes(4, "big") + vec8(nonce)
            + vec16(ticket) + b"\x00\x00")
    return handshake(NEW_SESSION_TICKET, body)


def key_update(request_update: bool) -> bytes:
    return handshake(KEY_UPDATE, b"\x01" if request_update else b"\x00")


class HandshakeReassembler:
    """Cuts handshake records into whole messages; messages may span records.

    Enforces the size limit as soon as a header is seen, so an oversized
    message is refused before its bytes are buffered.
    """

    __slots__ = ("_buf", "max_message_bytes")

    def __init__(self, max_message_bytes: int):
        self._buf = bytearray()
        self.max_message_bytes = max_message_bytes

    def feed(self, fragment: bytes) -> list[bytes]:
        """Add a record's handshake bytes; return the messages now complete."""
        buf = self._buf
        if not buf and len(fragment) >= 4:
            # Fast path: the record holds exactly one whole message (the usual case).
            n = (fragment[1] << 16) | (fragment[2] << 8) | fragment[3]
            if n + 4 == len(fragment) and n <= self.max_message_bytes:
                return [bytes(fragment)]
        buf += fragment
        out = []
        while len(buf) >= 4:
            n = (buf[1] << 16) | (buf[2] << 8) | buf[3]
            if n > self.max_message_bytes:
                raise IllegalParameter(
                    f"{HANDSHAKE_NAMES.get(buf[0], f'handshake type {buf[0]}')} of {n} bytes "
                    f"exceeds max_handshake_message_bytes={self.max_message_bytes}")
            if len(buf) < 4 + n:
                break
            out.append(bytes(buf[:4 + n]))
            del buf[:4 + n]
        return out

    @property
    def pending(self) -> int:
        return len(self._buf)

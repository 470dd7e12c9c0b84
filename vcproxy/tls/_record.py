"""The TLS 1.3 record layer, sans-IO (RFC 8446 §5).

``RecordSplitter`` cuts a byte stream into records and checks the header
(known content type, TLS major version, length ≤ 2^14 + 256). It never
decrypts: protection is an async provider operation, so ``TLSStream`` takes
the records out, opens them (batched) and hands the plaintext back.

``Protection`` is the per-direction state under one traffic key: the
provider's ``AeadSession``, the static IV and the sequence number. It builds
``(nonce, aad, inner_plaintext)`` items for sealing and the per-record nonce
for opening (nonce = IV xor seq, RFC 8446 §5.3); the AEAD call itself is the
caller's, so many records can go to the provider in one batch.

``split_inner`` undoes TLSInnerPlaintext (content || type || zeros).
"""
from __future__ import annotations

from ._errors import DecodeError, RecordOverflow, UnexpectedMessage
from ._keyschedule import CipherSuite, traffic_key_iv
from ._provider import AeadSession

CHANGE_CIPHER_SPEC = 20
ALERT = 21
HANDSHAKE = 22
APPLICATION_DATA = 23
CONTENT_TYPES = frozenset((CHANGE_CIPHER_SPEC, ALERT, HANDSHAKE, APPLICATION_DATA))

MAX_PLAINTEXT = 1 << 14                       # 2^14
MAX_CIPHERTEXT = MAX_PLAINTEXT + 256          # RFC 8446 §5.2
TAG_LEN = 16
HEADER_LEN = 5


_TYPE_BYTE = [bytes((t,)) for t in range(256)]


def record_header(content_type: int, length: int) -> bytes:
    return bytes((content_type, 3, 3, length >> 8, length & 0xFF))


class RecordSplitter:
    """Bytes in, ``(content_type, header, payload)`` records out."""

    __slots__ = ("_buf",)

    def __init__(self):
        self._buf = bytearray()

    def feed(self, data: bytes) -> None:
        self._buf += data

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def next_record(self) -> tuple[int, bytes, bytes] | None:
        buf = self._buf
        if len(buf) < HEADER_LEN:
            if buf and buf[0] not in CONTENT_TYPES:
                raise UnexpectedMessage(f"record: unknown content type {buf[0]}")
            return None
        ctype = buf[0]
        if ctype not in CONTENT_TYPES:
            raise UnexpectedMessage(f"record: unknown content type {ctype}")
        if buf[1] != 3:
            # legacy_record_version is otherwise ignored (RFC 8446 §5.1), but a
            # major version other than 3 is not TLS at all.
            raise DecodeError(f"record: version {buf[1]}.{buf[2]} is not TLS")
        length = (buf[3] << 8) | buf[4]
        if length > MAX_CIPHERTEXT:
            raise RecordOverflow(f"record: length {length} > {MAX_CIPHERTEXT}")
        if len(buf) < HEADER_LEN + length:
            return None
        header = bytes(buf[:HEADER_LEN])
        payload = bytes(buf[HEADER_LEN:HEADER_LEN + length])
        del buf[:HEADER_LEN + length]
        return ctype, header, payload


def split_inner(inner: bytes) -> tuple[int, bytes]:
    """TLSInnerPlaintext → (content_type, content), stripping zero padding."""
    if len(inner) > MAX_PLAINTEXT + 1:
        # RFC 8446 §5.4: "The presence of padding does not change the overall
        # record size limitations: the full encoded TLSInnerPlaintext MUST
        # NOT exceed 2^14 + 1 octets." (§5.2: else record_overflow.)
        raise RecordOverflow(f"record: inner plaintext of {len(inner)} bytes > {MAX_PLAINTEXT + 1}")
    content_type = inner[-1] if inner else 0
    if content_type:  # no padding: the usual case, one copy
        return content_type, inner[:-1]
    end = len(inner.rstrip(b"\x00"))
    if end == 0:
        # RFC 8446 §5.4: no non-zero octet → unexpected_message.
        raise UnexpectedMessage("record: protected record has no content type")
    return inner[end - 1], inner[:end - 1]


class Protection:
    """One direction's protection under one traffic secret."""

    __slots__ = ("suite", "secret", "session", "iv_int", "seq")

    tls12 = False
    #: Bytes of a sealed plaintext that are not content: the inner type byte.
    type_byte_len = 1

    def __init__(self, suite: CipherSuite, secret: bytes, session: AeadSession, iv: bytes):
        self.suite = suite
        self.secret = secret
        self.session = session
        self.iv_int = int.from_bytes(iv, "big")
        self.seq = 0

    @staticmethod
    def keys(suite: CipherSuite, secret: bytes) -> tuple[bytes, bytes]:
        return traffic_key_iv(suite, secret)

    def nonce(self, seq: int) -> bytes:
        return (self.iv_int ^ seq).to_bytes(12, "big")

    def seal_item(self, content_type: int, content: bytes) -> tuple[bytes, bytes, bytes]:
        """Next (nonce, aad, inner plaintext) to seal; advances the sequence number."""
        inner = b"".join((content, _TYPE_BYTE[content_type]))  # one copy, also from a memoryview
        seq = self.seq
        self.seq = seq + 1
        return (self.iv_int ^ seq).to_bytes(12, "big"), \
            record_header(APPLICATION_DATA, len(inner) + TAG_LEN), inner

    # The interface shared with ``_record12.Protection12`` (the stream's
    # batched seal/open path is the same for both versions):

    @staticmethod
    def wire_prefix(item: tuple[bytes, bytes, bytes]) -> bytes:
        return item[1]  # RFC 8446 §5.2: the additional data is the record header

    def open_item(self, seq: int, header: bytes, payload: bytes) -> tuple[bytes, bytes, bytes]:
        return (self.iv_int ^ seq).to_bytes(12, "big"), header, payload

    @staticmethod
    def content(header_type: int, inner: bytes) -> tuple[int, bytes]:
        return split_inner(inner)

"""TLS 1.2 record protection state, sans-IO (RFC 5246 §6.2.3.3, RFC 5288 §3,
RFC 7905 §2).

``Protection12`` is ``_record.Protection``'s TLS 1.2 twin with the same
small interface, so the stream's batched seal/open path serves both:

- ``seal_item(type, content)`` -> ``(nonce, aad, plaintext)`` for the
  provider's AEAD session, advancing the sequence number;
- ``wire_prefix(item)`` -> the bytes before the sealed output on the wire;
- ``open_item(seq, header, payload)`` -> ``(nonce, aad, ciphertext)``;
- ``content(header_type, plaintext)`` -> ``(content_type, content)``.

The AEAD construction::

    additional_data = seq_num(8) || type(1) || version(2) || length(2)   (plaintext length)
    AES-GCM:  nonce = salt(4, the key block's IV) || explicit(8)
              explicit = seq_num: unique per key without state of its own
              record  = header || explicit(8) || ciphertext || tag(16)
    ChaCha20: nonce = IV(12) xor (0^4 || seq_num(8)); record = header || ciphertext || tag

so TLS 1.2 records go through the same ``AeadSession`` (``seal_many``/
``open_many``, the small-record threshold) as TLS 1.3 records.
"""
from __future__ import annotations

from ._errors import BadRecordMac, RecordOverflow
from ._keyschedule12 import CipherSuite12
from ._provider import AeadSession
from ._record import MAX_PLAINTEXT, TAG_LEN, record_header

_VERSION = b"\x03\x03"
_TYPE_VERSION = [bytes((t,)) + _VERSION for t in range(256)]


class Protection12:
    """One direction's TLS 1.2 protection under one write key."""

    __slots__ = ("suite", "session", "seq", "_salt", "_iv_int", "_explicit")

    tls12 = True
    #: Bytes of a sealed plaintext that are not content (TLS 1.3: the type byte).
    type_byte_len = 0

    def __init__(self, suite: CipherSuite12, session: AeadSession, iv: bytes):
        self.suite = suite
        self.session = session
        self.seq = 0
        self._explicit = suite.explicit_nonce_len
        self._salt = iv if self._explicit else b""
        self._iv_int = 0 if self._explicit else int.from_bytes(iv, "big")

    def _nonce(self, seq: int) -> bytes:
        if self._explicit:
            return self._salt + seq.to_bytes(8, "big")
        return (self._iv_int ^ seq).to_bytes(12, "big")

    def seal_item(self, content_type: int, content) -> tuple[bytes, bytes, bytes]:
        seq = self.seq
        self.seq = seq + 1
        content = bytes(content)
        aad = seq.to_bytes(8, "big") + _TYPE_VERSION[content_type] + len(content).to_bytes(2, "big")
        return self._nonce(seq), aad, content

    def wire_prefix(self, item: tuple[bytes, bytes, bytes]) -> bytes:
        nonce, aad, content = item
        header = record_header(aad[8], self._explicit + len(content) + TAG_LEN)
        return header + nonce[4:] if self._explicit else header

    def open_item(self, seq: int, header: bytes, payload: bytes) -> tuple[bytes, bytes, bytes]:
        explicit = self._explicit
        if len(payload) < explicit + TAG_LEN:
            raise BadRecordMac(f"record of {len(payload)} bytes is shorter than its nonce and tag")
        if explicit:
            nonce = self._salt + payload[:explicit]
            payload = payload[explicit:]
        else:
            nonce = self._nonce(seq)
        aad = seq.to_bytes(8, "big") + _TYPE_VERSION[header[0]] \
            + (len(payload) - TAG_LEN).to_bytes(2, "big")
        return nonce, aad, payload

    @staticmethod
    def content(header_type: int, plaintext: bytes) -> tuple[int, bytes]:
        if len(plaintext) > MAX_PLAINTEXT:
            # RFC 5246 §6.2.1: TLSPlaintext.length MUST NOT exceed 2^14.
            raise RecordOverflow(f"record: plaintext of {len(plaintext)} bytes > {MAX_PLAINTEXT}")
        return header_type, plaintext

"""Session tickets: self-contained, encrypted resumption state (RFC 8446 §4.6.1).

A ticket is ``key_id(4) || nonce(12) || AES-256-GCM(ticket_key, state, aad=key_id)``
where ``key_id`` is the first 4 bytes of SHA-256 of the key, so rotated keys
are found without trial decryption, and ``state`` is::

    version(1)=1 || suite_id(2) || issued_at_ms(8) || age_add(4)
    || psk<1..255> || server_name<0..255> || alpn<0..255>

Ticket sealing stays local (like HKDF): it is one small AEAD call on the
server's own secret, not part of the TLS record stream. A ticket that fails to
open, is expired, or is for another suite hash just means a full handshake.
"""
from __future__ import annotations

import dataclasses
import hashlib

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ._codec import Reader, vec8
from ._errors import DecodeError

_VERSION = 1
_ciphers: dict[bytes, tuple[bytes, AESGCM]] = {}


def _cipher(key: bytes) -> tuple[bytes, AESGCM]:
    entry = _ciphers.get(key)
    if entry is None:
        if len(_ciphers) > 64:
            _ciphers.clear()
        entry = _ciphers[key] = (hashlib.sha256(key).digest()[:4], AESGCM(key))
    return entry


@dataclasses.dataclass(frozen=True, slots=True)
class TicketState:
    suite_id: int
    issued_at_ms: int
    age_add: int
    psk: bytes
    server_name: str
    alpn: str


def seal_ticket(key: bytes, nonce: bytes, state: TicketState) -> bytes:
    key_id, aead = _cipher(key)
    plain = (bytes((_VERSION,)) + state.suite_id.to_bytes(2, "big")
             + state.issued_at_ms.to_bytes(8, "big") + state.age_add.to_bytes(4, "big")
             + vec8(state.psk) + vec8(state.server_name.encode()) + vec8(state.alpn.encode()))
    return key_id + nonce + aead.encrypt(nonce, plain, key_id)


def open_ticket(keys: tuple[bytes, ...], ticket: bytes) -> TicketState | None:
    """The state inside ``ticket``, or None if no key of ours opens it."""
    if len(ticket) < 4 + 12 + 16:
        return None
    key_id = ticket[:4]
    for key in keys:
        kid, aead = _cipher(key)
        if kid != key_id:
            continue
        try:
            plain = aead.decrypt(ticket[4:16], ticket[16:], key_id)
        except InvalidTag:
            return None
        try:
            r = Reader(plain)
            if r.u8() != _VERSION:
                return None
            state = TicketState(r.u16(), int.from_bytes(r.take(8), "big"), r.u32(),
                                r.vec(1, "psk", 1), r.vec(1, "sni").decode(),
                                r.vec(1, "alpn").decode())
            r.end("ticket")
        except (DecodeError, UnicodeDecodeError):
            return None  # sealed by us, so only a format change gets here
        return state
    return None

"""Payloads of vhost-user CREATE_CRYPTO_SESSION (26) / CLOSE_CRYPTO_SESSION (27).

Two CREATE forms, told apart by size and magic:

1. QEMU 7.2 ``VhostUserCryptoSession`` (exactly 632 bytes, symmetric
   ciphers only; ``struct`` format ``"<q6I4B4xQQ64s512s"``): session_id,
   cipher_alg, key_len, hash_alg, hash_result_len, auth_key_len, add_len,
   op_type, direction, hash_mode, alg_chain_order, padding, two unused
   pointers, key[64], auth_key[512]. The reply is the same struct with
   session_id set (negative = failure). op_type CIPHER (1) is an AES-CBC
   session (CIPHER_ENCRYPT/DECRYPT by direction); ALGORITHM_CHAINING (2)
   with hash_mode AUTH (2) an AES-CBC + HMAC chain (encrypt-then-MAC, order
   CIPHER_THEN_HASH for encrypt, HASH_THEN_CIPHER for decrypt); the numbers
   are virtio-crypto's (``vcrypto.wire.virtio_crypto``). A plain-hash
   chain, op_type NONE (hash/MAC alone: QEMU 7.2's virtio-crypto answers
   the guest's HASH/MAC_CREATE_SESSION itself with NOTSUPP) or another
   algorithm gets a negative id (NOTSUPP); a key_len over 64 or auth_key_len
   over 512 is ERR.

2. vcrypto's form (vendor extension; any other size)::

       offset  size  field
       0       8     session_id   le64 signed; request: 0; reply: id ≥ 0 or -status
       8       4     magic        0x31534356 (b"VCS1" read as u32 LE)
       12      4     status       request: 0; reply: virtio-crypto status
       16      72+n  virtio_crypto_op_ctrl_req + key vlf
                     (``vcrypto.wire.virtio_crypto.encode_session_create``)

   The reply is the first 16 bytes only (no key echoed back).

CLOSE_CRYPTO_SESSION carries the u64 session id. QEMU sends it without
NEED_REPLY and expects nothing; our driver sets NEED_REPLY (REPLY_ACK) and
gets u64 0 on success or the virtio-crypto status (INVSESS) on failure.
"""
from __future__ import annotations

import dataclasses
import struct

from vcrypto.wire.virtio_crypto import (
    VIRTIO_CRYPTO_ERR, VIRTIO_CRYPTO_OK, SessionParams, WireError, decode_session_create,
    encode_session_create, sym_session_params,
)

VCS_MAGIC = 0x31534356
_VCS_HEAD = struct.Struct("<qII")
VCS_HEAD_BYTES = _VCS_HEAD.size
QEMU72 = struct.Struct("<q6I4B4xQQ64s512s")
QEMU72_BYTES = QEMU72.size  # 632


@dataclasses.dataclass(frozen=True)
class QemuSymSession:
    """A decoded QEMU 7.2 symmetric session request (kept for the reply)."""

    raw: bytes
    cipher_alg: int
    key_len: int
    op_type: int
    direction: int
    hash_alg: int = 0
    hash_result_len: int = 0
    auth_key_len: int = 0
    add_len: int = 0
    hash_mode: int = 0
    alg_chain_order: int = 0
    key: bytes = dataclasses.field(default=b"", repr=False)
    auth_key: bytes = dataclasses.field(default=b"", repr=False)

    def params(self) -> SessionParams:
        """The session in the shared vocabulary; ``WireError`` if refused."""
        if self.key_len > 64 or self.auth_key_len > 512:
            raise WireError(VIRTIO_CRYPTO_ERR, f"key_len {self.key_len} / auth_key_len "
                                               f"{self.auth_key_len} exceed QEMU's 64 / 512")
        return sym_session_params(
            op_type=self.op_type, cipher_algo=self.cipher_alg, key=self.key[:self.key_len],
            direction=self.direction, hash_mode=self.hash_mode, mac_algo=self.hash_alg,
            hash_result_len=self.hash_result_len, auth_key=self.auth_key[:self.auth_key_len],
            chain_order=self.alg_chain_order)


def encode_qemu72(*, cipher_alg: int = 0, key: bytes = b"", op_type: int = 0,
                  direction: int = 0, hash_alg: int = 0, hash_result_len: int = 0,
                  auth_key: bytes = b"", add_len: int = 0, hash_mode: int = 0,
                  alg_chain_order: int = 0, session_id: int = 0) -> bytes:
    """A QEMU 7.2 ``VhostUserCryptoSession`` as QEMU builds it (tests, tools)."""
    return QEMU72.pack(session_id, cipher_alg, len(key), hash_alg, hash_result_len,
                       len(auth_key), add_len, op_type, direction, hash_mode, alg_chain_order,
                       0, 0, key, auth_key)


def encode_create(params: SessionParams) -> bytes:
    return _VCS_HEAD.pack(0, VCS_MAGIC, 0) + encode_session_create(params)


def decode_create(payload: bytes) -> SessionParams | QemuSymSession:
    """Either form; raises ``WireError`` for a malformed or unsupported request."""
    if len(payload) >= VCS_HEAD_BYTES:
        _sid, magic, _status = _VCS_HEAD.unpack_from(payload)
        if magic == VCS_MAGIC:
            return decode_session_create(memoryview(payload)[VCS_HEAD_BYTES:])
    if len(payload) == QEMU72_BYTES:
        (_sid, cipher_alg, key_len, hash_alg, result_len, auth_len, add_len, op_type, direction,
         hash_mode, order, _p1, _p2, key, auth_key) = QEMU72.unpack(payload)
        return QemuSymSession(payload, cipher_alg=cipher_alg, key_len=key_len, op_type=op_type,
                              direction=direction, hash_alg=hash_alg, hash_result_len=result_len,
                              auth_key_len=auth_len, add_len=add_len, hash_mode=hash_mode,
                              alg_chain_order=order, key=key, auth_key=auth_key)
    raise WireError(VIRTIO_CRYPTO_ERR, f"session create payload of {len(payload)} bytes is "
                                       f"neither the vcrypto nor the QEMU 7.2 form")


def encode_create_reply(request: SessionParams | QemuSymSession | None, session_id: int | None,
                        status: int) -> bytes:
    """Reply for either form: the id on success, else a negative id + status."""
    sid = session_id if status == VIRTIO_CRYPTO_OK and session_id is not None else -max(status, 1)
    if isinstance(request, QemuSymSession):
        return struct.pack("<q", sid) + request.raw[8:]
    return _VCS_HEAD.pack(sid, VCS_MAGIC, status)


def decode_create_reply(payload: bytes) -> tuple[int, int]:
    """(session_id, status) from a vcrypto-form reply."""
    if len(payload) != VCS_HEAD_BYTES:
        raise WireError(VIRTIO_CRYPTO_ERR, f"session reply of {len(payload)} bytes")
    sid, magic, status = _VCS_HEAD.unpack(payload)
    if magic != VCS_MAGIC:
        raise WireError(VIRTIO_CRYPTO_ERR, f"session reply magic {magic:#x}")
    return sid, status

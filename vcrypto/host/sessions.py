"""Session objects and the per-device session table (DESIGN §5).

A session is validated once, at create: the (op, algorithm) pair, the key
length for AEAD, the private key parses and matches the algorithm for SIGN,
a ``key_ref`` names a key the host holds. Requests then carry only the id.

Ids come from one host-wide counter, so an id is never reused while the host
runs and an id from another device is simply *unknown* to this device's table:
scoping is by construction, not by a check that could be forgotten.

Refcounting: the table holds one reference; every request in flight holds
one more. ``close`` drops the table's reference; the key material is dropped
when the last reference goes (a request already running finishes with the
key it started with; new requests get INVSESS).
"""
from __future__ import annotations

import itertools

from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from vcrypto.host.keys import KeyStore, key_id_of
from vcrypto.host.resources._base import CryptoOpError
from vcrypto.host.resources._crypto import load_private_key
from vcrypto.ops import (
    AEAD_KEY_BYTES, CHAIN_PARTS, CIPHER_KEY_BYTES, MAC_MAX_KEY_BYTES, SYM_OPS, Alg, Op, is_valid,
)
from vcrypto.wire import virtio_crypto as vc

_ids = itertools.count(1)


class SessionError(Exception):
    """Session create/close refused; ``status`` is the virtio-crypto status."""

    def __init__(self, status: int, detail: str):
        super().__init__(f"{vc.STATUS_NAMES.get(status, status)}: {detail}")
        self.status = status
        self.detail = detail


class Session:
    __slots__ = ("id", "op", "alg", "key", "key_id", "refs", "opcode", "labels", "stateless")

    def __init__(self, sid: int, op: Op, alg: Alg, key: bytes, *, stateless: bool = False):
        self.id = sid
        self.op = op
        self.alg = alg
        self.key = key
        # a stateless AEAD key needs no id (the AEAD cipher cache is keyed by the key)
        self.key_id = key_id_of(key) if key and not stateless else b""
        self.refs = 1
        self.opcode = vc.DATA_OPCODE[op]
        self.labels = (op.value, alg.value)   # metrics labels, computed once, not per request
        # A stateless request's own session (virtio stateless mode: the key came
        # with the request): id 0, in no table, gone with its request.
        self.stateless = stateless

    def __repr__(self) -> str:
        return f"Session(id={self.id}, {self.op.value}/{self.alg.value}, refs={self.refs})"


def _key_matches(alg: Alg, key: object) -> bool:
    if alg is Alg.ED25519:
        return isinstance(key, ed25519.Ed25519PrivateKey)
    if alg is Alg.ECDSA_SECP256R1_SHA256:
        return isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1)
    if alg is Alg.ECDSA_SECP384R1_SHA384:
        return isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP384R1)
    return isinstance(key, rsa.RSAPrivateKey) and key.key_size >= 1024


def _check_sym_key(op: Op, alg: Alg, key: bytes) -> None:
    """CIPHER: the AES key; MAC: an HMAC key of 1..512 bytes; CHAIN: both."""
    cipher_len = 0
    if op is not Op.MAC:
        cipher_len = CIPHER_KEY_BYTES[CHAIN_PARTS[alg][0] if alg in CHAIN_PARTS else alg]
    mac_len = len(key) - cipher_len
    if op in (Op.CIPHER_ENCRYPT, Op.CIPHER_DECRYPT):
        ok = mac_len == 0
    else:
        ok = 0 < mac_len <= MAC_MAX_KEY_BYTES
    if not ok:
        raise SessionError(vc.VIRTIO_CRYPTO_KEY_REJECTED, f"{alg.value} key of {len(key)} bytes")


class SessionTable:
    """id → Session for one device, capped at ``max_sessions``."""

    def __init__(self, max_sessions: int, keys: KeyStore):
        self.max_sessions = max_sessions
        self._keys = keys
        self._sessions: dict[int, Session] = {}
        self.created = 0
        self.closed = 0
        self.destroyed = 0

    def __len__(self) -> int:
        return len(self._sessions)

    def by_kind(self) -> dict[str, int]:
        """Live sessions per ``op/alg`` (the admin status)."""
        counts: dict[str, int] = {}
        for session in self._sessions.values():
            kind = "/".join(session.labels)
            counts[kind] = counts.get(kind, 0) + 1
        return counts

    def create(self, params: vc.SessionParams) -> Session:
        if not is_valid(params.op, params.alg):
            raise SessionError(vc.VIRTIO_CRYPTO_NOTSUPP, f"{params.alg.value} for {params.op.value}")
        if len(self._sessions) >= self.max_sessions:
            raise SessionError(vc.VIRTIO_CRYPTO_NOSPC,
                               f"device already has {self.max_sessions} sessions")
        key = params.key
        if params.op in (Op.AEAD_SEAL, Op.AEAD_OPEN):
            if len(key) != AEAD_KEY_BYTES[params.alg]:
                raise SessionError(vc.VIRTIO_CRYPTO_KEY_REJECTED,
                                   f"{params.alg.value} key of {len(key)} bytes")
        elif params.op is Op.SIGN:
            if params.key_ref is not None:
                held = self._keys.get(params.key_ref)
                if held is None:
                    raise SessionError(vc.VIRTIO_CRYPTO_KEY_REJECTED,
                                       f"key_ref {params.key_ref!r} is not a key this host holds")
                key = held
            try:
                loaded = load_private_key(key)
            except CryptoOpError as exc:
                raise SessionError(vc.VIRTIO_CRYPTO_KEY_REJECTED, exc.detail) from exc
            if not _key_matches(params.alg, loaded):
                raise SessionError(vc.VIRTIO_CRYPTO_KEY_REJECTED,
                                   f"key type does not fit {params.alg.value}")
        elif params.op in SYM_OPS:
            _check_sym_key(params.op, params.alg, key)
        elif key:
            raise SessionError(vc.VIRTIO_CRYPTO_ERR, "an ECDH session carries no key")
        session = Session(next(_ids), params.op, params.alg, key)
        self._sessions[session.id] = session
        self.created += 1
        return session

    def acquire(self, sid: int) -> Session | None:
        """The live session ``sid`` with one more reference, or None."""
        session = self._sessions.get(sid)
        if session is not None:
            session.refs += 1
        return session

    def release(self, session: Session) -> None:
        if session.stateless:
            return      # never in the table: nothing to count or drop
        session.refs -= 1
        if session.refs == 0:
            session.key = b""     # drop the key material with the last reference
            self.destroyed += 1

    def close(self, sid: int) -> None:
        session = self._sessions.pop(sid, None)
        if session is None:
            raise SessionError(vc.VIRTIO_CRYPTO_INVSESS, f"no session {sid} on this device")
        self.closed += 1
        self.release(session)

    def close_all(self) -> None:
        for sid in list(self._sessions):
            self.close(sid)

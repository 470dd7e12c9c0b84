"""``sodium``: an in-process resource on libsodium (through PyNaCl).

A second, independent implementation beside ``openssl`` (`cryptography`,
i.e. OpenSSL): a pool of both is heterogeneous in what computes, not only
in its labels, and the scheduler's capability routing decides which one may
run a job, because libsodium does only part of what TLS needs:

=====================  =====================================================
capability             libsodium call
=====================  =====================================================
ecdh:x25519            ``crypto_scalarmult_base`` (own key from
                       ``randombytes``) + ``crypto_scalarmult``; keygen
                       (keyed form, u = 9): the fixed-base one alone;
                       derive-only: the general one alone
sign:ed25519           ``crypto_sign`` with the key pair of the RFC 8410 seed
aead_*:chacha20-poly1305  ``crypto_aead_chacha20poly1305_ietf_*`` (RFC 8439)
aead_*:aes-256-gcm     ``crypto_aead_aes256gcm_*``, only where the CPU has
                       AES-NI + PCLMUL (libsodium has no portable AES-GCM);
                       probed once at import
=====================  =====================================================

No P-256/P-384, no ECDSA, no RSA, no AES-128-GCM: a pool that routes those
here by configuration is rejected at load (``vcrypto.host.scheduling._pool``).

The data contract is ``vcrypto.ops``'s, byte for byte the same as
``openssl``'s (tests cross-check the two: same inputs give the same outputs,
each opens the other's ciphertexts, each side's signatures verify).

Private keys arrive as PKCS#8 DER (``CryptoJob.key``); an Ed25519 one is
RFC 8410's ``OneAsymmetricKey`` whose ``privateKey`` is the 32-byte seed.
It is parsed here with a minimal DER reader (no `cryptography` call on the
signing path) and the expanded key pair is cached by ``key_id``, confirmed
against the DER bytes like ``vcrypto.crypto``'s key cache.

Jobs run inline on the host's trio thread (microseconds, as ``openssl``'s);
AEAD payloads of ``thread_threshold_bytes`` or more run on a worker thread
(PyNaCl's cffi calls release the GIL).
"""
from __future__ import annotations

import collections
import os

import nacl.bindings as sodium
import nacl.exceptions
import trio

from vcrypto.host.resources._base import CryptoJob, CryptoOpError, Resource
from vcrypto.ops import AEAD_IV_BYTES, AEAD_KEY_BYTES, AEAD_TAG_BYTES, Alg, Capability, Op

__all__ = ["SodiumResource", "SODIUM_CAPABILITIES", "AES256GCM_AVAILABLE"]

DEFAULT_MAX_INFLIGHT = 64

_BAD = CryptoOpError.Kind.INVALID_INPUT


def _aes256gcm_available() -> bool:
    """libsodium's AES-256-GCM needs AES-NI + PCLMUL; PyNaCl raises
    ``UnavailableError`` without them (``import nacl.bindings`` has run
    ``sodium_init``, which detects the CPU features)."""
    try:
        sodium.crypto_aead_aes256gcm_encrypt(b"", None, bytes(12), bytes(32))
    except nacl.exceptions.UnavailableError:
        return False
    return True


AES256GCM_AVAILABLE = _aes256gcm_available()

_AEAD_ALGS = (Alg.CHACHA20_POLY1305,) + ((Alg.AES_256_GCM,) if AES256GCM_AVAILABLE else ())

#: What libsodium really does on this machine.
SODIUM_CAPABILITIES: frozenset[Capability] = frozenset(
    {(Op.ECDH, Alg.X25519), (Op.SIGN, Alg.ED25519)}
    | {(op, alg) for op in (Op.AEAD_SEAL, Op.AEAD_OPEN) for alg in _AEAD_ALGS}
)

_SEAL = {Alg.CHACHA20_POLY1305: sodium.crypto_aead_chacha20poly1305_ietf_encrypt,
         Alg.AES_256_GCM: sodium.crypto_aead_aes256gcm_encrypt}
_OPEN = {Alg.CHACHA20_POLY1305: sodium.crypto_aead_chacha20poly1305_ietf_decrypt,
         Alg.AES_256_GCM: sodium.crypto_aead_aes256gcm_decrypt}

# RFC 8410 §3: id-Ed25519 OBJECT IDENTIFIER ::= { 1 3 101 112 }
_ED25519_OID = bytes.fromhex("06032b6570")


# ------------------------------------------------------------ RFC 8410 keys

def _tlv(data: bytes, pos: int) -> tuple[int, int, int]:
    """One DER TLV at ``pos``: (tag, start of value, end of value)."""
    if pos + 2 > len(data):
        raise ValueError("truncated")
    tag, first = data[pos], data[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    else:
        n = first & 0x7F
        if n == 0 or n > 2 or pos + n > len(data):
            raise ValueError("bad length")
        length = int.from_bytes(data[pos:pos + n], "big")
        pos += n
    if pos + length > len(data):
        raise ValueError("truncated")
    return tag, pos, pos + length


def ed25519_seed_from_pkcs8(der: bytes) -> bytes:
    """The 32-byte seed of an RFC 8410 Ed25519 private key (PKCS#8 v1 or
    OneAsymmetricKey v2 with optional attributes / public key).

    OneAsymmetricKey ::= SEQUENCE { version INTEGER, privateKeyAlgorithm
    AlgorithmIdentifier, privateKey OCTET STRING (containing CurvePrivateKey
    ::= OCTET STRING), [0] attributes OPTIONAL, [1] publicKey OPTIONAL }"""
    try:
        tag, start, end = _tlv(der, 0)
        if tag != 0x30 or end != len(der):
            raise ValueError("not one SEQUENCE")
        tag, v0, v1 = _tlv(der, start)               # version
        if tag != 0x02 or der[v0:v1] not in (b"\x00", b"\x01"):
            raise ValueError("bad version")
        tag, a0, a1 = _tlv(der, v1)                  # AlgorithmIdentifier
        # RFC 8410 §3: "the parameters MUST be absent"
        if tag != 0x30 or der[a0:a1] != _ED25519_OID:
            raise ValueError("not an Ed25519 key")
        tag, k0, k1 = _tlv(der, a1)                  # privateKey OCTET STRING
        if tag != 0x04:
            raise ValueError("no privateKey")
        tag, s0, s1 = _tlv(der, k0)                  # CurvePrivateKey OCTET STRING
        if tag != 0x04 or s1 != k1 or s1 - s0 != 32:
            raise ValueError("CurvePrivateKey is not a 32-byte OCTET STRING")
        return der[s0:s1]
    except (ValueError, IndexError) as exc:
        raise CryptoOpError(_BAD, f"ed25519 needs an RFC 8410 Ed25519 PKCS#8 key: {exc}") from None


class _SigningKeys:
    """LRU key_id -> (der, libsodium 64-byte secret key)."""

    def __init__(self, size: int = 64):
        self._size = size
        self._keys: collections.OrderedDict[bytes, tuple[bytes, bytes]] = collections.OrderedDict()

    def get(self, key_id: bytes, der: bytes) -> bytes:
        hit = self._keys.get(key_id)
        if hit is not None and hit[0] == der:
            self._keys.move_to_end(key_id)
            return hit[1]
        _pk, sk = sodium.crypto_sign_seed_keypair(ed25519_seed_from_pkcs8(der))
        self._keys[key_id] = (der, sk)
        while len(self._keys) > self._size:
            self._keys.popitem(last=False)
        return sk


# --------------------------------------------------------------- the ops

def _aead(job: CryptoJob) -> bytes:
    want = AEAD_KEY_BYTES[job.alg]
    if len(job.key) != want:
        raise CryptoOpError(_BAD, f"{job.alg.value} key must be {want} bytes, got {len(job.key)}")
    if len(job.iv) != AEAD_IV_BYTES:
        raise CryptoOpError(_BAD, f"AEAD iv must be {AEAD_IV_BYTES} bytes, got {len(job.iv)}")
    src = bytes(job.src)            # PyNaCl takes bytes only
    aad = bytes(job.aad) or None
    if job.op is Op.AEAD_SEAL:
        return _SEAL[job.alg](src, aad, bytes(job.iv), job.key)
    if len(src) < AEAD_TAG_BYTES:
        raise CryptoOpError(CryptoOpError.Kind.BAD_MESSAGE,
                            f"AEAD_OPEN input {len(src)} bytes is shorter than the tag")
    try:
        return _OPEN[job.alg](src, aad, bytes(job.iv), job.key)
    except nacl.exceptions.CryptoError:
        raise CryptoOpError(CryptoOpError.Kind.BAD_MESSAGE, "AEAD tag mismatch") from None


_BASE_POINT = b"\x09" + bytes(31)


def _x25519(src: bytes, secret_only: bool = False) -> bytes:
    """``src`` = the peer's key (keygen + derive), or own scalar || peer key
    (the keyed form TLS 1.2 uses, ``vcrypto.ops``); own public key || secret,
    or the secret alone (``secret_only``, keyed form: no base multiplication)."""
    if len(src) == 64:
        own, peer = bytes(src[:32]), bytes(src[32:])
    elif len(src) == 32:
        own, peer = sodium.randombytes(32), bytes(src)
    else:
        raise CryptoOpError(_BAD, f"X25519 peer key must be 32 bytes (or scalar || key: 64), "
                                  f"got {len(src)}")
    if peer == _BASE_POINT:
        # keygen (the keyed form against u = 9, a key-share refill):
        # X25519(k, 9) IS the public key, and the fixed-base multiplication
        # computes it several times faster than the general one: one, not two
        pub = sodium.crypto_scalarmult_base(own)
        return pub if secret_only else pub + pub
    try:
        # libsodium refuses an all-zero shared secret (a small-order peer
        # point), as RFC 7748 §6.1 allows and RFC 8446 §7.4.2 requires.
        shared = sodium.crypto_scalarmult(own, peer)
    except nacl.exceptions.RuntimeError:
        raise CryptoOpError(_BAD, "X25519 exchange failed: all-zero shared secret") from None
    if secret_only and len(src) == 64:
        return shared
    return sodium.crypto_scalarmult_base(own) + shared


class SodiumResource(Resource):
    kind = "sodium"
    #: The capabilities this kind can have at all (the config may narrow them).
    supported = SODIUM_CAPABILITIES

    def __init__(self, name: str = "sodium",
                 capabilities: frozenset[Capability] = SODIUM_CAPABILITIES,
                 max_inflight: int = DEFAULT_MAX_INFLIGHT, *,
                 thread_threshold_bytes: int = 256 * 1024):
        extra = capabilities - SODIUM_CAPABILITIES
        if extra:
            names = ", ".join(sorted(f"{op.value}:{alg.value}" for op, alg in extra))
            raise ValueError(f"libsodium cannot do {names}")
        super().__init__(name, capabilities, max_inflight)
        self.thread_threshold_bytes = thread_threshold_bytes
        self._limiter = trio.CapacityLimiter(max(1, os.cpu_count() or 1))
        self._keys = _SigningKeys()
        self.executed = 0

    def perform(self, job: CryptoJob) -> bytes:
        if job.capability not in self.capabilities:
            raise CryptoOpError(CryptoOpError.Kind.NOT_SUPPORTED,
                                f"{self.name}: libsodium cannot do {job.op.value}/{job.alg.value}")
        if job.op is Op.ECDH:
            return _x25519(job.src, job.secret_only)
        if job.op is Op.SIGN:
            return sodium.crypto_sign(bytes(job.src), self._keys.get(job.key_id, job.key))[:64]
        return _aead(job)

    def runs_inline(self, job: CryptoJob) -> bool:
        # Only big AEAD payloads go to a thread (the key cache is touched
        # on the trio thread only).
        return job.op is Op.ECDH or job.op is Op.SIGN or len(job.src) < self.thread_threshold_bytes

    def execute_inline(self, job: CryptoJob) -> bytes:
        self.executed += 1
        return self.perform(job)

    async def execute(self, job: CryptoJob) -> bytes:
        self.executed += 1
        if not self.runs_inline(job):
            return await trio.to_thread.run_sync(self.perform, job, limiter=self._limiter)
        await trio.lowlevel.checkpoint()
        return self.perform(job)

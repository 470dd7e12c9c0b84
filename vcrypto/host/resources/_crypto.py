"""The crypto itself: ``perform(job) -> bytes``, synchronous, on `cryptography`.

Every resource that really computes (``openssl`` in-process, ``workers`` in
child processes) calls this one function, so every resource gives the same
answer for the same job and the data contract of ``vcrypto.ops`` is enforced
in one place:

=============  ==============================================================
op             result
=============  ==============================================================
AEAD_SEAL      ciphertext || 16-byte tag (``job.iv`` 12 bytes, ``job.aad``)
AEAD_OPEN      plaintext; tag mismatch (or input shorter than the tag) ->
               ``CryptoOpError(BAD_MESSAGE)``
ECDH           own ephemeral public key || shared secret.  X25519: 32 || 32.
               P-256: 65 (SEC1 uncompressed) || 32. P-384: 97 || 48.
SIGN           signature over ``job.src`` (the message, not a digest).
               ECDSA: DER. RSA-PSS: MGF1 with the same hash, salt length =
               hash length (RFC 8446 §4.2.3). RSA PKCS#1 v1.5. Ed25519: 64 B.
=============  ==============================================================

RSA signatures are re-verified with the public key before being returned
(the Lenstra/Bellcore check against a faulty CRT computation, as Envoy's
CryptoMB provider does): a mismatch raises ``ResourceFault`` because the
*resource* produced garbage, and the scheduler retries elsewhere.

Private keys for SIGN arrive as DER (PKCS#8) in ``job.key``. Parsing a
private key costs far more than an ECDSA signature, so loaded keys are kept in
a small LRU cache by ``job.key_id``; the cached key is confirmed to come from
the same DER bytes, so a colliding or reused ``key_id`` can never sign with the
wrong key.
"""
from __future__ import annotations

import collections
import threading

from cryptography.exceptions import InvalidSignature, InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from vcrypto.host.resources._base import CryptoJob, CryptoOpError, ResourceFault
from vcrypto.ops import AEAD_IV_BYTES, AEAD_KEY_BYTES, AEAD_TAG_BYTES, Alg, Op, is_valid

__all__ = ["perform", "load_private_key", "KEY_CACHE_SIZE"]

KEY_CACHE_SIZE = 64

_BAD = CryptoOpError.Kind.INVALID_INPUT

_CURVES = {
    Alg.SECP256R1: ec.SECP256R1,
    Alg.SECP384R1: ec.SECP384R1,
}

_ECDSA = {
    Alg.ECDSA_SECP256R1_SHA256: (ec.SECP256R1, hashes.SHA256),
    Alg.ECDSA_SECP384R1_SHA384: (ec.SECP384R1, hashes.SHA384),
}

_RSA_PSS = {
    Alg.RSA_PSS_RSAE_SHA256: hashes.SHA256,
    Alg.RSA_PSS_RSAE_SHA384: hashes.SHA384,
    Alg.RSA_PSS_RSAE_SHA512: hashes.SHA512,
}

_RSA_PKCS1 = {
    Alg.RSA_PKCS1_SHA256: hashes.SHA256,
    Alg.RSA_PKCS1_SHA384: hashes.SHA384,
    Alg.RSA_PKCS1_SHA512: hashes.SHA512,
}


# --------------------------------------------------------------------------
# key cache
# --------------------------------------------------------------------------

class _KeyCache:
    """LRU of parsed private keys: key_id -> (der, key). Thread-safe because the
    openssl resource may run large jobs on worker threads."""

    def __init__(self, size: int):
        self._size = size
        self._keys: collections.OrderedDict[bytes, tuple[bytes, object]] = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, key_id: bytes, der: bytes) -> object:
        with self._lock:
            hit = self._keys.get(key_id)
            if hit is not None and hit[0] == der:
                self._keys.move_to_end(key_id)
                return hit[1]
        key = load_private_key(der)
        with self._lock:
            self._keys[key_id] = (der, key)
            self._keys.move_to_end(key_id)
            while len(self._keys) > self._size:
                self._keys.popitem(last=False)
        return key


_key_cache = _KeyCache(KEY_CACHE_SIZE)


def load_private_key(der: bytes) -> object:
    """Parse a DER (PKCS#8 or traditional) private key; typed error if bad."""
    try:
        return serialization.load_der_private_key(der, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise CryptoOpError(_BAD, f"private key is not a valid unencrypted DER key: {exc}") from exc


# --------------------------------------------------------------------------
# ops
# --------------------------------------------------------------------------

#: AEAD cipher objects by (alg, key): building one (the key schedule) costs
#: more than sealing a small TLS record, and a session seals many records
#: with one key. The objects are immutable and safe to share between
#: threads. Bounded: cleared when full (sessions come and go).
_AEAD_CACHE_SIZE = 1024
_aead_cache: dict[tuple[Alg, bytes], object] = {}


def _aead(job: CryptoJob):
    alg, key = job.alg, job.key
    cipher = _aead_cache.get((alg, key))
    if cipher is not None:
        if len(job.iv) != AEAD_IV_BYTES:
            raise CryptoOpError(_BAD, f"AEAD iv must be {AEAD_IV_BYTES} bytes, got {len(job.iv)}")
        return cipher
    want = AEAD_KEY_BYTES[alg]
    if len(key) != want:
        raise CryptoOpError(_BAD, f"{alg.value} key must be {want} bytes, got {len(key)}")
    if len(job.iv) != AEAD_IV_BYTES:
        raise CryptoOpError(_BAD, f"AEAD iv must be {AEAD_IV_BYTES} bytes, got {len(job.iv)}")
    cipher = ChaCha20Poly1305(key) if alg is Alg.CHACHA20_POLY1305 else AESGCM(key)
    if len(_aead_cache) >= _AEAD_CACHE_SIZE:
        _aead_cache.clear()
    _aead_cache[(alg, key)] = cipher
    return cipher


def _seal(job: CryptoJob) -> bytes:
    return _aead(job).encrypt(job.iv, job.src, job.aad or None)


def _open(job: CryptoJob) -> bytes:
    cipher = _aead(job)
    if len(job.src) < AEAD_TAG_BYTES:
        # Cannot authenticate: the same answer as a tag mismatch (and as
        # `cryptography` gives in-process).
        raise CryptoOpError(CryptoOpError.Kind.BAD_MESSAGE,
                            f"AEAD_OPEN input {len(job.src)} bytes is shorter than the tag")
    try:
        return cipher.decrypt(job.iv, job.src, job.aad or None)
    except InvalidTag:
        raise CryptoOpError(CryptoOpError.Kind.BAD_MESSAGE, "AEAD tag mismatch") from None


def _ecdh(job: CryptoJob) -> bytes:
    if job.alg is Alg.X25519:
        if len(job.src) != 32:
            raise CryptoOpError(_BAD, f"X25519 peer key must be 32 bytes, got {len(job.src)}")
        try:
            peer = x25519.X25519PublicKey.from_public_bytes(job.src)
            own = x25519.X25519PrivateKey.generate()
            shared = own.exchange(peer)
        except ValueError as exc:  # all-zero shared secret (small-order point)
            raise CryptoOpError(_BAD, f"X25519 exchange failed: {exc}") from exc
        pub = own.public_key().public_bytes(serialization.Encoding.Raw,
                                            serialization.PublicFormat.Raw)
        return pub + shared
    curve = _CURVES[job.alg]()
    try:
        peer = ec.EllipticCurvePublicKey.from_encoded_point(curve, job.src)
    except ValueError as exc:
        raise CryptoOpError(_BAD, f"{job.alg.value} peer key is not a valid point: {exc}") from exc
    if len(job.src) != 1 + 2 * ((curve.key_size + 7) // 8):
        # RFC 8446 §4.2.8.2: TLS 1.3 uses the uncompressed form only.
        raise CryptoOpError(_BAD, f"{job.alg.value} peer key must be an uncompressed point")
    own = ec.generate_private_key(curve)
    shared = own.exchange(ec.ECDH(), peer)
    pub = own.public_key().public_bytes(serialization.Encoding.X962,
                                        serialization.PublicFormat.UncompressedPoint)
    return pub + shared


def _sign(job: CryptoJob) -> bytes:
    key = _key_cache.get(job.key_id, job.key)
    alg = job.alg
    if alg in _ECDSA:
        curve_cls, hash_cls = _ECDSA[alg]
        if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, curve_cls):
            raise CryptoOpError(_BAD, f"{alg.value} needs a {curve_cls.name} key, got {_describe(key)}")
        return key.sign(job.src, ec.ECDSA(hash_cls()))
    if alg is Alg.ED25519:
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise CryptoOpError(_BAD, f"ed25519 needs an Ed25519 key, got {_describe(key)}")
        return key.sign(job.src)
    if alg in _RSA_PSS:
        hash_alg = _RSA_PSS[alg]()
        pad = padding.PSS(mgf=padding.MGF1(hash_alg), salt_length=hash_alg.digest_size)
    elif alg in _RSA_PKCS1:
        hash_alg = _RSA_PKCS1[alg]()
        pad = padding.PKCS1v15()
    else:  # pragma: no cover - guarded by is_valid in perform()
        raise CryptoOpError(CryptoOpError.Kind.NOT_SUPPORTED, f"sign with {alg.value}")
    if not isinstance(key, rsa.RSAPrivateKey):
        raise CryptoOpError(_BAD, f"{alg.value} needs an RSA key, got {_describe(key)}")
    signature = key.sign(job.src, pad, hash_alg)
    try:
        # Re-verify: a CRT fault would leak the key (Lenstra) and give the
        # client a bad handshake. Treat it as the resource's fault.
        key.public_key().verify(signature, job.src, pad, hash_alg)
    except InvalidSignature:
        raise ResourceFault(f"{alg.value} signature failed re-verification") from None
    return signature


def _describe(key: object) -> str:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return f"an EC {key.curve.name} key"
    if isinstance(key, rsa.RSAPrivateKey):
        return f"an RSA-{key.key_size} key"
    return type(key).__name__


_DISPATCH = {
    Op.AEAD_SEAL: _seal,
    Op.AEAD_OPEN: _open,
    Op.ECDH: _ecdh,
    Op.SIGN: _sign,
}


def perform(job: CryptoJob) -> bytes:
    """Run one job synchronously; raise ``CryptoOpError`` for a bad request,
    ``ResourceFault`` when a computed result fails its own check."""
    if not is_valid(job.op, job.alg):
        raise CryptoOpError(CryptoOpError.Kind.NOT_SUPPORTED,
                            f"{job.alg.value} is not valid for {job.op.value}")
    try:
        return _DISPATCH[job.op](job)
    except (CryptoOpError, ResourceFault):
        raise
    except (ValueError, TypeError, OverflowError) as exc:
        # Anything else `cryptography` rejects (lengths, data too large for the
        # key) is the request's fault, never a crash of the caller.
        raise CryptoOpError(_BAD, f"{job.op.value}/{job.alg.value}: {exc}") from exc

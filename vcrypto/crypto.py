"""The crypto itself, on `cryptography`: the one implementation every layer
that computes in-process uses (the host's ``openssl`` and ``workers``
resources, the engine's fallback path), so the same request gives the same
answer wherever it runs. Synchronous, no I/O. It sits beside ``vcrypto.ops``
so both the host and the engine may import it (DESIGN §10).

Data contract (``vcrypto.ops``):

=============  ==============================================================
op             result
=============  ==============================================================
AEAD_SEAL      ciphertext || 16-byte tag (``iv`` 12 bytes, ``aad``)
AEAD_OPEN      plaintext; tag mismatch (or input shorter than the tag) ->
               ``CryptoError(BAD_MESSAGE)``
ECDH           own ephemeral public key || shared secret.  X25519: 32 || 32.
               P-256: 65 (SEC1 uncompressed) || 32. P-384: 97 || 48.
               Hybrids (draft-ietf-tls-ecdhe-mlkem): src the client share,
               result the server share || the 64-byte secret, ML-KEM part
               first for X25519MLKEM768, P-256 part first for
               SecP256r1MLKEM768 (FIPS 203 Encaps + ECDH in one op).
SIGN           signature over ``src`` (the message, not a digest).
               ECDSA: DER. RSA-PSS: MGF1 with the same hash, salt length =
               hash length (RFC 8446 §4.2.3). RSA PKCS#1 v1.5. Ed25519: 64 B.
CIPHER_*       AES-CBC of ``src`` (a multiple of 16 bytes, no padding),
               ``iv`` 16 bytes.
MAC            HMAC (RFC 2104) of ``src``, the full digest.
CHAIN_SEAL     AES-CBC ciphertext || HMAC(aad || ciphertext); key = AES key
               || HMAC key.
CHAIN_OPEN     ``src`` = ciphertext || HMAC: the HMAC is checked first
               (constant time), mismatch -> ``CryptoError(BAD_MESSAGE)``, then
               the plaintext.
=============  ==============================================================

Errors: ``CryptoError`` (the request is bad: its ``kind`` says how) and
``CryptoFault`` (a computed result failed its own check). Each caller maps
them to its own vocabulary (the host's ``CryptoOpError``/``ResourceFault``,
the engine's ``SlotStatus``).

RSA signatures are re-verified with the public key before being returned
(the Lenstra/Bellcore check against a faulty CRT computation, as Envoy's
CryptoMB provider does): a mismatch raises ``CryptoFault``.

Two ways in:
- ``perform(op, alg, key, key_id, src, iv, aad)``: a self-contained request
  (the host's jobs). Private keys arrive as DER (PKCS#8); parsing one costs
  far more than an ECDSA signature, so loaded keys are kept in a small LRU by
  ``key_id``, confirmed to come from the same DER bytes so a colliding or
  reused ``key_id`` can never sign with the wrong key. AEAD objects are
  cached by (alg, key).
- ``Prepared(op, alg, key)``: a session's key material loaded once and kept
  by the caller (the engine's sessions); ``Prepared.perform(src, iv, aad)``.
"""
from __future__ import annotations

import collections
import enum
import threading

from cryptography.exceptions import InvalidSignature, InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives import constant_time, hashes, hmac, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, mlkem, padding, rsa, x25519
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from nacl import bindings as _sodium
from nacl import exceptions as _sodium_errors

from vcrypto.ops import (
    AEAD_IV_BYTES, AEAD_KEY_BYTES, AEAD_TAG_BYTES, CHAIN_PARTS, CIPHER_BLOCK_BYTES,
    CIPHER_KEY_BYTES, ECDH_PUBLIC_BYTES, HYBRID_KX_ALGS, KX_PEER_BYTES, MAC_DIGEST_BYTES, MAC_MAX_KEY_BYTES, SYM_OPS, Alg, Op,
    is_valid,
)

__all__ = ["CryptoError", "CryptoFault", "Prepared", "perform", "load_private_key",
           "ecdh_split", "KEY_CACHE_SIZE"]

KEY_CACHE_SIZE = 64


class CryptoError(Exception):
    """The request itself is bad; computing it anywhere else fails the same way."""

    class Kind(enum.Enum):
        BAD_MESSAGE = "bad_message"      # AEAD tag mismatch
        INVALID_INPUT = "invalid_input"  # bad peer key, bad lengths, wrong key type
        NOT_SUPPORTED = "not_supported"  # (op, alg) is not a valid pair

    def __init__(self, kind: CryptoError.Kind, detail: str):
        super().__init__(f"{kind.value}: {detail}")
        self.kind = kind
        self.detail = detail


class CryptoFault(Exception):
    """A computed result failed its own check (RSA re-verification): the
    computation, not the request, is at fault; computing it again may succeed."""


_BAD = CryptoError.Kind.INVALID_INPUT

_CURVES = {
    Alg.SECP256R1: ec.SECP256R1,
    Alg.SECP384R1: ec.SECP384R1,
}

#: Own public key length of an ECDH result (the rest is the shared secret).

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
# key material
# --------------------------------------------------------------------------

def load_private_key(der: bytes) -> object:
    """Parse a DER (PKCS#8 or traditional) private key; typed error if bad."""
    try:
        return serialization.load_der_private_key(der, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise CryptoError(_BAD, f"private key is not a valid unencrypted DER key: {exc}") from exc


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

#: AEAD cipher objects by (alg, key): building one (the key schedule) costs
#: more than sealing a small TLS record, and a session seals many records
#: with one key. The objects are immutable and safe to share between
#: threads. Bounded: cleared when full (sessions come and go).
_AEAD_CACHE_SIZE = 1024
_aead_cache: dict[tuple[Alg, bytes], object] = {}


def _aead_cipher(alg: Alg, key: bytes):
    cipher = _aead_cache.get((alg, key))
    if cipher is not None:
        return cipher
    want = AEAD_KEY_BYTES[alg]
    if len(key) != want:
        raise CryptoError(_BAD, f"{alg.value} key must be {want} bytes, got {len(key)}")
    cipher = ChaCha20Poly1305(key) if alg is Alg.CHACHA20_POLY1305 else AESGCM(key)
    if len(_aead_cache) >= _AEAD_CACHE_SIZE:
        _aead_cache.clear()
    _aead_cache[(alg, key)] = cipher
    return cipher


# --------------------------------------------------------------------------
# ops (key material already loaded)
# --------------------------------------------------------------------------

def _check_iv(iv: bytes) -> None:
    if len(iv) != AEAD_IV_BYTES:
        raise CryptoError(_BAD, f"AEAD iv must be {AEAD_IV_BYTES} bytes, got {len(iv)}")


def _seal(cipher, src: bytes, iv: bytes, aad: bytes) -> bytes:
    _check_iv(iv)
    return cipher.encrypt(iv, src, aad or None)


def _open(cipher, src: bytes, iv: bytes, aad: bytes) -> bytes:
    _check_iv(iv)
    if len(src) < AEAD_TAG_BYTES:
        # Cannot authenticate: the same answer as a tag mismatch.
        raise CryptoError(CryptoError.Kind.BAD_MESSAGE,
                          f"AEAD_OPEN input {len(src)} bytes is shorter than the tag")
    try:
        return cipher.decrypt(iv, src, aad or None)
    except InvalidTag:
        raise CryptoError(CryptoError.Kind.BAD_MESSAGE, "AEAD tag mismatch") from None


#: Private scalar length of the keyed ECDH form (src = scalar || peer key).
_ECDH_SCALAR_BYTES = {Alg.X25519: 32, Alg.SECP256R1: 32, Alg.SECP384R1: 48}


def _ecdh(alg: Alg, peer_bytes: bytes, secret_only: bool = False) -> bytes:
    if alg in HYBRID_KX_ALGS:
        return _hybrid(alg, peer_bytes)
    if len(peer_bytes) == _ECDH_SCALAR_BYTES[alg] + ECDH_PUBLIC_BYTES[alg]:
        return _ecdh_keyed(alg, peer_bytes[:_ECDH_SCALAR_BYTES[alg]],
                           peer_bytes[_ECDH_SCALAR_BYTES[alg]:], secret_only)
    if alg is Alg.X25519:
        if len(peer_bytes) != 32:
            raise CryptoError(_BAD, f"X25519 peer key must be 32 bytes, got {len(peer_bytes)}")
        try:
            peer = x25519.X25519PublicKey.from_public_bytes(peer_bytes)
            own = x25519.X25519PrivateKey.generate()
            shared = own.exchange(peer)
        except ValueError as exc:  # all-zero shared secret (small-order point)
            raise CryptoError(_BAD, f"X25519 exchange failed: {exc}") from exc
        pub = own.public_key().public_bytes(serialization.Encoding.Raw,
                                            serialization.PublicFormat.Raw)
        return pub + shared
    curve = _CURVES[alg]()
    try:
        peer = ec.EllipticCurvePublicKey.from_encoded_point(curve, peer_bytes)
    except ValueError as exc:
        raise CryptoError(_BAD, f"{alg.value} peer key is not a valid point: {exc}") from exc
    if len(peer_bytes) != ECDH_PUBLIC_BYTES[alg]:
        # RFC 8446 §4.2.8.2: TLS 1.3 uses the uncompressed form only.
        raise CryptoError(_BAD, f"{alg.value} peer key must be an uncompressed point")
    own = ec.generate_private_key(curve)
    shared = own.exchange(ec.ECDH(), peer)
    pub = own.public_key().public_bytes(serialization.Encoding.X962,
                                        serialization.PublicFormat.UncompressedPoint)
    return pub + shared


#: hybrid -> (its ECDH alg, whether the ECDH part comes first in every field)
_HYBRID_PARTS = {Alg.X25519MLKEM768: (Alg.X25519, False), Alg.SECP256R1MLKEM768: (Alg.SECP256R1, True)}
_MLKEM768_EK_BYTES = 1184


def _hybrid(alg: Alg, client_share: bytes) -> bytes:
    """draft-ietf-tls-ecdhe-mlkem, server side: ML-KEM-768 Encaps against the
    client's encapsulation key and ECDH against its ECDH share; the draft's
    exact length, and FIPS 203's check of the key (§7.2), else INVALID_INPUT."""
    if len(client_share) != KX_PEER_BYTES[alg]:
        raise CryptoError(_BAD, f"{alg.value} client share must be {KX_PEER_BYTES[alg]} bytes, "
                          f"got {len(client_share)}")
    ecdh_alg, ecdh_first = _HYBRID_PARTS[alg]
    n = ECDH_PUBLIC_BYTES[ecdh_alg]
    if ecdh_first:
        ecdh_share, ek = client_share[:n], client_share[n:]
    else:
        ek, ecdh_share = client_share[:_MLKEM768_EK_BYTES], client_share[_MLKEM768_EK_BYTES:]
    try:
        kem_secret, ciphertext = mlkem.MLKEM768PublicKey.from_public_bytes(ek).encapsulate()
    except ValueError as exc:
        raise CryptoError(_BAD, f"ML-KEM-768 encapsulation key rejected: {exc}") from exc
    out = _ecdh(ecdh_alg, ecdh_share)
    own, ecdh_secret = out[:n], out[n:]
    if ecdh_first:
        return own + ciphertext + ecdh_secret + kem_secret
    return ciphertext + own + kem_secret + ecdh_secret


def _ecdh_keyed(alg: Alg, scalar: bytes, peer_bytes: bytes, secret_only: bool = False) -> bytes:
    """ECDH under the caller's ephemeral scalar (TLS 1.2 sends its share before
    it has the peer's, so the ephemeral key must outlive one request: the
    requester keeps the scalar, the host keeps nothing). ``secret_only``: the
    derive-only form (``vcrypto.ops``): the secret alone. X25519 then never
    computes our public key: ``cryptography`` derives it whenever it loads a
    scalar (a second multiplication, 2.3x the exchange alone), so the raw
    RFC 7748 function comes from libsodium (``crypto_scalarmult``: same
    clamping, same masked u, same answer; a dependency already, the host's
    ``sodium`` resource). P-256/384: ``cryptography`` has no way to load a
    scalar without its public point, so only the serialisation is saved."""
    if alg is Alg.X25519:
        if secret_only and peer_bytes != _X25519_BASE:
            if len(peer_bytes) != 32:
                raise CryptoError(_BAD, f"X25519 peer key must be 32 bytes, got {len(peer_bytes)}")
            try:
                return _sodium.crypto_scalarmult(bytes(scalar), bytes(peer_bytes))
            except _sodium_errors.RuntimeError:  # all-zero shared secret (small-order point)
                raise CryptoError(_BAD, "X25519 exchange failed: all-zero shared secret") from None
        own = x25519.X25519PrivateKey.from_private_bytes(scalar)
        pub = own.public_key().public_bytes(serialization.Encoding.Raw,
                                            serialization.PublicFormat.Raw)
        if peer_bytes == _X25519_BASE:  # X25519(k, 9) is the public key: no second multiplication
            return pub if secret_only else pub + pub
        try:
            shared = own.exchange(x25519.X25519PublicKey.from_public_bytes(peer_bytes))
        except ValueError as exc:  # all-zero shared secret (small-order point)
            raise CryptoError(_BAD, f"X25519 exchange failed: {exc}") from exc
        return pub + shared
    curve = _CURVES[alg]()
    try:
        own = ec.derive_private_key(int.from_bytes(scalar, "big"), curve)
    except ValueError as exc:
        raise CryptoError(_BAD, f"{alg.value} scalar out of range: {exc}") from exc
    pub = own.public_key().public_bytes(serialization.Encoding.X962,
                                        serialization.PublicFormat.UncompressedPoint)
    if peer_bytes == _generator(alg):  # keygen: k·G is the public key, its x the "secret"
        return pub[1:1 + (len(pub) - 1) // 2] if secret_only else pub + pub[1:1 + (len(pub) - 1) // 2]
    try:
        peer = ec.EllipticCurvePublicKey.from_encoded_point(curve, peer_bytes)
    except ValueError as exc:
        raise CryptoError(_BAD, f"{alg.value} peer key is not a valid point: {exc}") from exc
    shared = own.exchange(ec.ECDH(), peer)
    return shared if secret_only else pub + shared


_X25519_BASE = b"\x09" + bytes(31)
_GENERATORS: dict[Alg, bytes] = {}


def _generator(alg: Alg) -> bytes:
    g = _GENERATORS.get(alg)
    if g is None:
        g = _GENERATORS[alg] = ec.derive_private_key(1, _CURVES[alg]()).public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    return g


def _sign(key: object, alg: Alg, msg: bytes) -> bytes:
    if alg in _ECDSA:
        curve_cls, hash_cls = _ECDSA[alg]
        if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, curve_cls):
            raise CryptoError(_BAD, f"{alg.value} needs a {curve_cls.name} key, got {_describe(key)}")
        return key.sign(msg, ec.ECDSA(hash_cls()))
    if alg is Alg.ED25519:
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise CryptoError(_BAD, f"ed25519 needs an Ed25519 key, got {_describe(key)}")
        return key.sign(msg)
    if alg in _RSA_PSS:
        hash_alg = _RSA_PSS[alg]()
        pad = padding.PSS(mgf=padding.MGF1(hash_alg), salt_length=hash_alg.digest_size)
    elif alg in _RSA_PKCS1:
        hash_alg = _RSA_PKCS1[alg]()
        pad = padding.PKCS1v15()
    else:  # pragma: no cover - guarded by is_valid
        raise CryptoError(CryptoError.Kind.NOT_SUPPORTED, f"sign with {alg.value}")
    if not isinstance(key, rsa.RSAPrivateKey):
        raise CryptoError(_BAD, f"{alg.value} needs an RSA key, got {_describe(key)}")
    signature = key.sign(msg, pad, hash_alg)
    try:
        # Re-verify: a CRT fault would leak the key (Lenstra) and give the
        # client a bad handshake.
        key.public_key().verify(signature, msg, pad, hash_alg)
    except InvalidSignature:
        raise CryptoFault(f"{alg.value} signature failed re-verification") from None
    return signature


_HMAC_HASH = {Alg.HMAC_SHA1: hashes.SHA1, Alg.HMAC_SHA256: hashes.SHA256}


def _cbc(alg: Alg, key: bytes, iv: bytes, src: bytes, encrypt: bool) -> bytes:
    if len(key) != CIPHER_KEY_BYTES[alg]:
        raise CryptoError(_BAD, f"{alg.value} key must be {CIPHER_KEY_BYTES[alg]} bytes, "
                                f"got {len(key)}")
    if len(iv) != CIPHER_BLOCK_BYTES:
        raise CryptoError(_BAD, f"AES-CBC iv must be {CIPHER_BLOCK_BYTES} bytes, got {len(iv)}")
    if len(src) % CIPHER_BLOCK_BYTES:
        raise CryptoError(_BAD, f"AES-CBC input of {len(src)} bytes is not a whole number "
                                f"of {CIPHER_BLOCK_BYTES}-byte blocks")
    cipher = Cipher(algorithms.AES(key), modes.CBC(iv))
    ctx = cipher.encryptor() if encrypt else cipher.decryptor()
    return ctx.update(src) + ctx.finalize()


def _hmac(alg: Alg, key: bytes, *parts: bytes) -> bytes:
    if not 0 < len(key) <= MAC_MAX_KEY_BYTES:
        raise CryptoError(_BAD, f"{alg.value} key of {len(key)} bytes (1..{MAC_MAX_KEY_BYTES})")
    h = hmac.HMAC(key, _HMAC_HASH[alg]())
    for part in parts:
        h.update(part)
    return h.finalize()


def _sym(op: Op, alg: Alg, key: bytes, src: bytes, iv: bytes, aad: bytes) -> bytes:
    """CIPHER_*, MAC and the CHAIN ops (``key`` raw, see the table above)."""
    if op is Op.CIPHER_ENCRYPT or op is Op.CIPHER_DECRYPT:
        return _cbc(alg, key, iv, src, op is Op.CIPHER_ENCRYPT)
    if op is Op.MAC:
        return _hmac(alg, key, src)
    cipher_alg, mac_alg = CHAIN_PARTS[alg]
    n = CIPHER_KEY_BYTES[cipher_alg]
    ckey, mkey = key[:n], key[n:]
    if len(ckey) != n:
        raise CryptoError(_BAD, f"{alg.value} key of {len(key)} bytes: the AES key alone is {n}")
    tag_len = MAC_DIGEST_BYTES[mac_alg]
    if op is Op.CHAIN_SEAL:
        ct = _cbc(cipher_alg, ckey, iv, src, True)
        return ct + _hmac(mac_alg, mkey, aad, ct)
    if len(src) < tag_len:
        raise CryptoError(CryptoError.Kind.BAD_MESSAGE,
                          f"{alg.value} input of {len(src)} bytes is shorter than the MAC")
    ct, tag = src[:len(src) - tag_len], src[len(src) - tag_len:]
    if not constant_time.bytes_eq(bytes(tag), _hmac(mac_alg, mkey, aad, ct)):
        raise CryptoError(CryptoError.Kind.BAD_MESSAGE, f"{alg.value} MAC mismatch")
    return _cbc(cipher_alg, ckey, iv, ct, False)


def _describe(key: object) -> str:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return f"an EC {key.curve.name} key"
    if isinstance(key, rsa.RSAPrivateKey):
        return f"an RSA-{key.key_size} key"
    return type(key).__name__


def _run(op: Op, alg: Alg, loaded: object, src: bytes, iv: bytes, aad: bytes,
         secret_only: bool = False) -> bytes:
    """One op on loaded key material (cipher object, private key or None).
    ``secret_only``: ECDH's derive-only form (``vcrypto.ops``)."""
    try:
        if op is Op.AEAD_SEAL:
            return _seal(loaded, src, iv, aad)
        if op is Op.AEAD_OPEN:
            return _open(loaded, src, iv, aad)
        if op is Op.ECDH:
            return _ecdh(alg, src, secret_only)
        if op in SYM_OPS:
            return _sym(op, alg, loaded, src, iv, aad)
        return _sign(loaded, alg, src)
    except (CryptoError, CryptoFault):
        raise
    except (ValueError, TypeError, OverflowError) as exc:
        # Anything else `cryptography` rejects (lengths, data too large for the
        # key) is the request's fault, never a crash of the caller.
        raise CryptoError(_BAD, f"{op.value}/{alg.value}: {exc}") from exc


def _check_pair(op: Op, alg: Alg) -> None:
    if not is_valid(op, alg):
        raise CryptoError(CryptoError.Kind.NOT_SUPPORTED, f"{alg.value} is not valid for {op.value}")


# --------------------------------------------------------------------------
# entry points
# --------------------------------------------------------------------------

def perform(op: Op, alg: Alg, key: bytes, key_id: bytes, src: bytes,
            iv: bytes = b"", aad: bytes = b"", secret_only: bool = False) -> bytes:
    """Run one self-contained request. ``key``: the raw AEAD key, the DER
    private key for SIGN (cached by ``key_id``), empty for ECDH.
    ``secret_only``: ECDH's derive-only form (``vcrypto.ops``; ignored by
    the keyless form, whose result then does not fit the request's dst)."""
    _check_pair(op, alg)
    if op in (Op.AEAD_SEAL, Op.AEAD_OPEN):
        loaded = _aead_cipher(alg, key)
    elif op is Op.SIGN:
        loaded = _key_cache.get(key_id, key)
    elif op in SYM_OPS:
        loaded = key
    else:
        loaded = None
    return _run(op, alg, loaded, src, iv, aad, secret_only)


class Prepared:
    """A session's key material loaded once (the AEAD object, the parsed
    private key): ``perform`` then costs only the operation. The constructor
    raises ``CryptoError`` for material ``perform`` would reject."""

    __slots__ = ("op", "alg", "_loaded")

    def __init__(self, op: Op, alg: Alg, key: bytes = b""):
        _check_pair(op, alg)
        self.op, self.alg = op, alg
        if op in (Op.AEAD_SEAL, Op.AEAD_OPEN):
            self._loaded = _aead_cipher(alg, key)
        elif op is Op.SIGN:
            self._loaded = load_private_key(key)
        elif op in SYM_OPS:
            self._loaded = key
        else:
            self._loaded = None

    def perform(self, src: bytes, iv: bytes = b"", aad: bytes = b"", secret_only: bool = False) -> bytes:
        return _run(self.op, self.alg, self._loaded, src, iv, aad, secret_only)


def ecdh_split(alg: Alg, dst: bytes) -> tuple[bytes, bytes]:
    """Split an ECDH result into (own public key, shared secret)."""
    n = ECDH_PUBLIC_BYTES[alg]
    return dst[:n], dst[n:]

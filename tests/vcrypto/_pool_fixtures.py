"""Jobs for pool/scheduler tests, each with a check against `cryptography`
computed here in the test (not by the code under test)."""
from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from vcrypto.host.resources._base import CryptoJob
from vcrypto.ops import Alg, Op


@dataclasses.dataclass
class Case:
    job: CryptoJob
    check: Callable[[bytes], None]


def _der(key) -> bytes:
    return key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _kid(der: bytes) -> bytes:
    return hashlib.sha256(der).digest()[:16]


def seal_case(i: int, alg: Alg = Alg.AES_128_GCM, size: int = 64) -> Case:
    key = bytes([i % 251 + 1]) * (16 if alg is Alg.AES_128_GCM else 32)
    iv = i.to_bytes(12, "big")
    pattern = bytes(range(256)) * 2
    src = (pattern[i % 256:i % 256 + 256] * (size // 256 + 1))[:size]
    aad = b"aad-%d" % i
    cipher = ChaCha20Poly1305(key) if alg is Alg.CHACHA20_POLY1305 else AESGCM(key)
    expected = cipher.encrypt(iv, src, aad)

    def check(result: bytes) -> None:
        assert result == expected, f"seal #{i} wrong"

    return Case(CryptoJob(Op.AEAD_SEAL, alg, key, _kid(key), src, iv, aad, seq=i), check)


def open_case(i: int, alg: Alg = Alg.AES_256_GCM) -> Case:
    key = bytes([i % 251 + 2]) * (16 if alg is Alg.AES_128_GCM else 32)
    iv = (i + 7).to_bytes(12, "big")
    plain = b"record %d " % i * 3
    cipher = ChaCha20Poly1305(key) if alg is Alg.CHACHA20_POLY1305 else AESGCM(key)
    ct = cipher.encrypt(iv, plain, None)

    def check(result: bytes) -> None:
        assert result == plain

    return Case(CryptoJob(Op.AEAD_OPEN, alg, key, _kid(key), ct, iv, seq=i), check)


_EC_KEY = ec.generate_private_key(ec.SECP256R1())
_RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
_ED_KEY = ed25519.Ed25519PrivateKey.generate()


def sign_case(i: int, alg: Alg = Alg.ECDSA_SECP256R1_SHA256) -> Case:
    msg = b"transcript hash %d" % i
    if alg is Alg.ECDSA_SECP256R1_SHA256:
        key = _EC_KEY

        def check(sig: bytes) -> None:
            key.public_key().verify(sig, msg, ec.ECDSA(hashes.SHA256()))
    elif alg is Alg.RSA_PSS_RSAE_SHA256:
        key = _RSA_KEY

        def check(sig: bytes) -> None:
            key.public_key().verify(sig, msg, padding.PSS(padding.MGF1(hashes.SHA256()), 32),
                                    hashes.SHA256())
    elif alg is Alg.ED25519:
        key = _ED_KEY

        def check(sig: bytes) -> None:
            key.public_key().verify(sig, msg)
    else:
        raise AssertionError(alg)
    der = _der(key)
    return Case(CryptoJob(Op.SIGN, alg, der, _kid(der), msg, seq=i), check)


def ecdh_case(i: int) -> Case:
    peer = x25519.X25519PrivateKey.generate()
    peer_pub = peer.public_key().public_bytes(serialization.Encoding.Raw,
                                              serialization.PublicFormat.Raw)

    def check(result: bytes) -> None:
        assert len(result) == 64
        own_pub = x25519.X25519PublicKey.from_public_bytes(result[:32])
        assert peer.exchange(own_pub) == result[32:]

    return Case(CryptoJob(Op.ECDH, Alg.X25519, b"", b"", peer_pub, seq=i), check)


def mixed_case(i: int) -> Case:
    """A mix of ops, cheap ones mostly (tests stay fast on 2 cores)."""
    kind = i % 6
    if kind in (0, 1):
        return seal_case(i)
    if kind == 2:
        return open_case(i)
    if kind == 3:
        return sign_case(i)
    if kind == 4:
        return ecdh_case(i)
    return seal_case(i, Alg.CHACHA20_POLY1305)

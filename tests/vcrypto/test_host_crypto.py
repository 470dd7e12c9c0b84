"""perform() and OpensslResource: every op x algorithm, checked against
`cryptography` computed here, plus the bad-input paths."""
from __future__ import annotations

import hashlib
import os

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from vcrypto.host.resources._base import CryptoJob, CryptoOpError
from vcrypto.host.resources._crypto import perform
from vcrypto.host.resources.openssl import OpensslResource
from vcrypto.ops import AEAD_KEY_BYTES, ALL_CAPABILITIES, Alg, Op

from host_refcheck import check_ecdh, check_signature, der_of, faulty_rsa_key, key_for


def _job(op, alg, key=b"", src=b"", iv=b"", aad=b""):
    return CryptoJob(op=op, alg=alg, key=key, key_id=hashlib.sha256(key).digest(),
                     src=src, iv=iv, aad=aad)


@pytest.mark.parametrize("alg", [Alg.AES_128_GCM, Alg.AES_256_GCM, Alg.CHACHA20_POLY1305])
def test_aead_roundtrip(alg):
    key = os.urandom(AEAD_KEY_BYTES[alg])
    iv, aad, msg = os.urandom(12), b"hdr", os.urandom(1000)
    ct = perform(_job(Op.AEAD_SEAL, alg, key, msg, iv, aad))
    ref = (ChaCha20Poly1305 if alg is Alg.CHACHA20_POLY1305 else AESGCM)(key)
    assert ct == ref.encrypt(iv, msg, aad)
    assert perform(_job(Op.AEAD_OPEN, alg, key, ct, iv, aad)) == msg
    bad = bytes([ct[0] ^ 1]) + ct[1:]
    with pytest.raises(CryptoOpError) as ei:
        perform(_job(Op.AEAD_OPEN, alg, key, bad, iv, aad))
    assert ei.value.kind is CryptoOpError.Kind.BAD_MESSAGE
    with pytest.raises(CryptoOpError):
        perform(_job(Op.AEAD_SEAL, alg, key[:-1], msg, iv, aad))
    with pytest.raises(CryptoOpError):
        perform(_job(Op.AEAD_SEAL, alg, key, msg, iv[:8], aad))


@pytest.mark.parametrize("alg", [Alg.X25519, Alg.SECP256R1, Alg.SECP384R1])
def test_ecdh(alg):
    check_ecdh(alg, lambda peer_pub: perform(_job(Op.ECDH, alg, src=peer_pub)))
    with pytest.raises(CryptoOpError):
        perform(_job(Op.ECDH, alg, src=b"\x04" + b"\x01" * 10))


SIGN_ALGS = sorted((a for op, a in ALL_CAPABILITIES if op is Op.SIGN), key=lambda a: a.value)


@pytest.mark.parametrize("alg", SIGN_ALGS)
def test_sign(alg):
    der = der_of(alg)
    msg = b"transcript hash input" * 7
    sig = perform(_job(Op.SIGN, alg, der, msg))
    check_signature(alg, msg, sig)


def test_sign_wrong_key_type_and_bad_der():
    with pytest.raises(CryptoOpError, match="needs"):
        perform(_job(Op.SIGN, Alg.ED25519, der_of(Alg.ECDSA_SECP256R1_SHA256), b"m"))
    with pytest.raises(CryptoOpError, match="DER"):
        perform(_job(Op.SIGN, Alg.ED25519, b"\x30\x03garbage", b"m"))
    with pytest.raises(CryptoOpError):
        perform(_job(Op.SIGN, Alg.AES_128_GCM, b"", b"m"))


async def test_openssl_resource_inline_and_threaded():
    res = OpensslResource("o1", thread_threshold_bytes=4096)
    await res.start()
    key = os.urandom(16)
    iv = os.urandom(12)
    for size in (100, 10000):
        msg = os.urandom(size)
        ct = await res.execute(_job(Op.AEAD_SEAL, Alg.AES_128_GCM, key, msg, iv))
        assert ct == AESGCM(key).encrypt(iv, msg, None)
    sig = await res.execute(_job(Op.SIGN, Alg.RSA_PSS_RSAE_SHA256, der_of(Alg.RSA_PSS_RSAE_SHA256), b"x"))
    check_signature(Alg.RSA_PSS_RSAE_SHA256, b"x", sig)
    assert res.executed == 3 and res.threaded == 2
    with pytest.raises(CryptoOpError):
        await res.execute(_job(Op.ECDH, Alg.X25519, src=b"short"))
    await res.aclose()


def test_faulty_rsa_signature_is_caught_by_reverification():
    """A signer that returns a corrupted signature (what a CRT fault produces)
    is caught by the re-verification: ResourceFault, never a bad signature."""
    from vcrypto import crypto as _crypto  # the shared implementation holds the key cache
    from vcrypto.host.resources._base import ResourceFault

    faulty = faulty_rsa_key(key_for(Alg.RSA_PSS_RSAE_SHA256))

    der = der_of(Alg.RSA_PSS_RSAE_SHA256)
    key_id = b"faulty-key-id"
    with _crypto._key_cache._lock:
        _crypto._key_cache._keys[key_id] = (der, faulty)
    try:
        job = CryptoJob(op=Op.SIGN, alg=Alg.RSA_PSS_RSAE_SHA256, key=der, key_id=key_id, src=b"m")
        with pytest.raises(ResourceFault, match="re-verification"):
            perform(job)
    finally:
        with _crypto._key_cache._lock:
            _crypto._key_cache._keys.pop(key_id, None)

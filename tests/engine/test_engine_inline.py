"""The engine's in-process path (``InlineSession``) gives exactly what the
host's resources give for the same request: one implementation
(``vcrypto.crypto``) behind both, errors mapped to each side's vocabulary."""
from __future__ import annotations

import hashlib
import os

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from tests.vcrypto.host_refcheck import der_of, faulty_rsa_key, key_for
from vcrypto.engine import InlineOpError, InlineSession
from vcrypto.engine import SessionMeta, SlotStatus
from vcrypto.host.resources._base import CryptoJob, CryptoOpError
from vcrypto.host.resources._crypto import perform as host_perform
from vcrypto.ops import Alg, Op

#: The statuses an engine reports for the host's CryptoOpError kinds (the
#: host's default bad_input_status, key_rejected, reaches the engine as INVALID).
_HOST_KIND = {
    CryptoOpError.Kind.BAD_MESSAGE: SlotStatus.BAD_MESSAGE,
    CryptoOpError.Kind.INVALID_INPUT: SlotStatus.INVALID,
    CryptoOpError.Kind.NOT_SUPPORTED: SlotStatus.NOT_SUPPORTED,
}


def _der(key) -> bytes:
    return key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


ED_DER = _der(ed25519.Ed25519PrivateKey.generate())
P256_DER = _der(ec.generate_private_key(ec.SECP256R1()))
AES_KEY = os.urandom(16)
IV = os.urandom(12)
SEALED = InlineSession(SessionMeta(Op.AEAD_SEAL, Alg.AES_128_GCM, AES_KEY)).perform(b"m" * 40, IV, b"a")
P256_PUB = ec.generate_private_key(ec.SECP256R1()).public_key()

# (op, alg, key, src, iv, aad)
CASES = {
    "seal_ok": (Op.AEAD_SEAL, Alg.AES_128_GCM, AES_KEY, b"hello", IV, b"aad"),
    "seal_bad_iv": (Op.AEAD_SEAL, Alg.AES_128_GCM, AES_KEY, b"hello", IV[:8], b""),
    "open_ok": (Op.AEAD_OPEN, Alg.AES_128_GCM, AES_KEY, SEALED, IV, b"a"),
    "open_tag_mismatch": (Op.AEAD_OPEN, Alg.AES_128_GCM, AES_KEY, SEALED, IV, b"b"),
    "open_shorter_than_tag": (Op.AEAD_OPEN, Alg.AES_128_GCM, AES_KEY, b"short", IV, b""),
    "x25519_short_peer": (Op.ECDH, Alg.X25519, b"", b"\x01" * 31, b"", b""),
    "x25519_small_order": (Op.ECDH, Alg.X25519, b"", b"\x00" * 32, b"", b""),
    "p256_compressed": (Op.ECDH, Alg.SECP256R1, b"",
                        P256_PUB.public_bytes(serialization.Encoding.X962,
                                              serialization.PublicFormat.CompressedPoint), b"", b""),
    "p256_off_curve": (Op.ECDH, Alg.SECP256R1, b"", b"\x04" + b"\x01" * 64, b"", b""),
    "ed25519_ok": (Op.SIGN, Alg.ED25519, ED_DER, b"message", b"", b""),
    "ecdsa_with_ed_key": (Op.SIGN, Alg.ECDSA_SECP256R1_SHA256, ED_DER, b"m", b"", b""),
    "rsa_with_ec_key": (Op.SIGN, Alg.RSA_PSS_RSAE_SHA256, P256_DER, b"m", b"", b""),
    "ecdsa_p384_with_p256_key": (Op.SIGN, Alg.ECDSA_SECP384R1_SHA384, P256_DER, b"m", b"", b""),
}


def _host(op, alg, key, src, iv, aad):
    job = CryptoJob(op=op, alg=alg, key=key, key_id=hashlib.sha256(key).digest(),
                    src=src, iv=iv, aad=aad)
    try:
        return SlotStatus.OK, host_perform(job)
    except CryptoOpError as exc:
        return _HOST_KIND[exc.kind], b""


def _inline(op, alg, key, src, iv, aad):
    try:
        return SlotStatus.OK, InlineSession(SessionMeta(op, alg, key)).perform(src, iv, aad)
    except InlineOpError as exc:
        return exc.status, b""


@pytest.mark.parametrize("name", sorted(CASES))
def test_inline_status_and_result_are_the_hosts(name):
    op, alg, *rest = CASES[name]
    host_status, host_out = _host(op, alg, *rest)
    inline_status, inline_out = _inline(op, alg, *rest)
    assert inline_status is host_status
    if op is Op.ECDH:
        # a fresh ephemeral key per request: only the shape can agree
        assert len(inline_out) == len(host_out)
    else:  # AEAD and Ed25519 are deterministic
        assert inline_out == host_out
    assert (host_status is SlotStatus.OK) == name.endswith("_ok")


def test_invalid_pair_and_bad_key_material_are_rejected_at_session_creation():
    with pytest.raises(InlineOpError) as info:
        InlineSession(SessionMeta(Op.SIGN, Alg.X25519, ED_DER))
    assert info.value.status is SlotStatus.NOT_SUPPORTED
    with pytest.raises(InlineOpError) as info:
        InlineSession(SessionMeta(Op.AEAD_SEAL, Alg.AES_256_GCM, os.urandom(16)))
    assert info.value.status is SlotStatus.INVALID
    with pytest.raises(InlineOpError) as info:
        InlineSession(SessionMeta(Op.SIGN, Alg.ED25519, b"not a der key"))
    assert info.value.status is SlotStatus.INVALID
    with pytest.raises(InlineOpError) as info:
        InlineSession(SessionMeta(Op.SIGN, Alg.ED25519, b"", key_ref="cert-a"))
    assert info.value.status is SlotStatus.NOT_SUPPORTED


def test_inline_rsa_signature_is_reverified():
    """The fallback path re-verifies RSA signatures as the host does: a faulty
    signer (what a CRT fault produces) gives DEVICE_ERROR, never a signature."""
    sess = InlineSession(SessionMeta(Op.SIGN, Alg.RSA_PSS_RSAE_SHA256, der_of(Alg.RSA_PSS_RSAE_SHA256)))
    assert len(sess.perform(b"m")) == 256
    sess._prepared._loaded = faulty_rsa_key(key_for(Alg.RSA_PSS_RSAE_SHA256))
    with pytest.raises(InlineOpError, match="re-verification") as info:
        sess.perform(b"m")
    assert info.value.status is SlotStatus.DEVICE_ERROR


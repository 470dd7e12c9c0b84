"""HKDF-Expand-Label and HMAC against `cryptography`'s independent HKDF/HMAC.

The key schedule runs HMAC on hashlib with prepared key states (one-shot for
single use, reused pads for a secret that keys several expansions); both
paths must match RFC 5869 for every length, including the multi-block path
TLS 1.3 itself never reaches.
"""
from __future__ import annotations

import hashlib
import hmac

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from vcproxy.tls._keyschedule import (
    SUITES, HandshakeSecret, MasterSecret, _HmacKey, _hmac, derive_secret, hkdf_expand_label,
    traffic_key_iv,
)

_HASHES = {"sha256": hashes.SHA256, "sha384": hashes.SHA384}


def _reference_label(hash_name: str, secret: bytes, label: bytes, context: bytes,
                     length: int) -> bytes:
    full = b"tls13 " + label
    info = length.to_bytes(2, "big") + bytes((len(full),)) + full + bytes((len(context),)) + context
    return HKDFExpand(_HASHES[hash_name](), length, info).derive(secret)


@pytest.mark.parametrize("hash_name", ["sha256", "sha384"])
@pytest.mark.parametrize("length", [1, 12, 16, 32, 48, 49, 97, 200])
@pytest.mark.parametrize("context", [b"", b"\x07" * 32])
def test_expand_label_matches_rfc5869(hash_name, length, context):
    secret = bytes(range(1, 49))[: 48 if hash_name == "sha384" else 32]
    want = _reference_label(hash_name, secret, b"some label", context, length)
    assert hkdf_expand_label(hash_name, secret, b"some label", context, length) == want
    # twice: the cached info blocks must not leak between calls
    assert hkdf_expand_label(hash_name, secret, b"some label", context, length) == want


@pytest.mark.parametrize("hash_name", ["sha256", "sha384"])
@pytest.mark.parametrize("key_len", [0, 16, 32, 64, 128, 200])
def test_hmac_paths_match_stdlib(hash_name, key_len):
    key = bytes((i * 7) & 0xFF for i in range(key_len))
    mac = _HmacKey(key, hash_name)
    for msg in (b"", b"x", bytes(300)):
        want = hmac.new(key, msg, getattr(hashlib, hash_name)).digest()
        assert _hmac(key, msg, hash_name) == want
        assert mac.digest(msg) == want  # reusable: the prepared states stay untouched
        assert mac.digest(msg) == want


@pytest.mark.parametrize("suite", list(SUITES.values()), ids=lambda s: s.name)
def test_stage_objects_match_the_one_shot_derivations(suite):
    n = suite.hash_len
    secret, th = bytes(range(n)), bytes(range(100, 100 + n))
    hs = HandshakeSecret(suite, secret)
    assert hs.traffic_secrets(th) == (derive_secret(suite, secret, b"c hs traffic", th),
                                      derive_secret(suite, secret, b"s hs traffic", th))
    master = hs.into_master()
    derived = derive_secret(suite, secret, b"derived", suite.empty_hash())
    assert master.secret == _hmac(derived, bytes(n), suite.hash_name)
    ms = MasterSecret(suite, secret)
    assert ms.resumption_master_secret(th) == derive_secret(suite, secret, b"res master", th)
    assert ms.exporter_master_secret(th) == derive_secret(suite, secret, b"exp master", th)
    assert traffic_key_iv(suite, secret) == (
        _reference_label(suite.hash_name, secret, b"key", b"", suite.key_len),
        _reference_label(suite.hash_name, secret, b"iv", b"", 12))

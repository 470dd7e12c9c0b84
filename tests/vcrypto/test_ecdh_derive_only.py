"""ECDH's derive-only keyed form (``vcrypto.ops``): a request whose dst has
room for the shared secret alone gets just the secret, the same bytes from
every resource kind and from the engine's in-process path, and the data path
asks for it exactly when the request's dst is that short."""
from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, x25519
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from vcrypto import crypto
from vcrypto.engine import InlineSession, SessionMeta
from vcrypto.host.resources import OpensslResource, SimulatedResource, SodiumResource, WorkersResource
from vcrypto.host.resources._base import CryptoJob, CryptoOpError
from vcrypto.ops import (ECDH_DST_BYTES, ECDH_PUBLIC_BYTES, ECDH_SECRET_BYTES, Alg, Op,
                         ecdh_secret_only)

_CURVES = {Alg.SECP256R1: ec.SECP256R1, Alg.SECP384R1: ec.SECP384R1}


def _peer(alg: Alg) -> tuple[bytes, bytes]:
    """(a keyed-form scalar of ours, a fresh peer public key) for ``alg``."""
    if alg is Alg.X25519:
        peer = x25519.X25519PrivateKey.generate().public_key().public_bytes_raw()
        return os.urandom(32), peer
    curve = _CURVES[alg]()
    own = ec.generate_private_key(curve).private_numbers().private_value
    peer = ec.generate_private_key(curve).public_key().public_bytes(
        Encoding.X962, PublicFormat.UncompressedPoint)
    return own.to_bytes(ECDH_SECRET_BYTES[alg], "big"), peer


def test_the_dst_length_says_secret_only():
    for alg in (Alg.X25519, Alg.SECP256R1, Alg.SECP384R1):
        assert ecdh_secret_only(alg, ECDH_SECRET_BYTES[alg])
        assert not ecdh_secret_only(alg, ECDH_DST_BYTES[alg])


@pytest.mark.parametrize("alg", [Alg.X25519, Alg.SECP256R1, Alg.SECP384R1])
async def test_every_resource_kind_returns_the_full_forms_secret_alone(alg):
    workers = WorkersResource("w", processes=1)
    await workers.start()
    try:
        kinds = [OpensslResource("o"), SimulatedResource("s", default_latency_us=1), workers]
        if alg is Alg.X25519:
            kinds.append(SodiumResource("na"))
        for _ in range(3):
            scalar, peer = _peer(alg)
            full = crypto.perform(Op.ECDH, alg, b"", b"", scalar + peer)
            assert len(full) == ECDH_DST_BYTES[alg]
            secret = full[ECDH_PUBLIC_BYTES[alg]:]
            job = CryptoJob(Op.ECDH, alg, b"", b"", scalar + peer, secret_only=True)
            for res in kinds:
                assert await res.execute(job) == secret, res.kind
                assert await res.execute(CryptoJob(Op.ECDH, alg, b"", b"", scalar + peer)) == full, res.kind
            # the engine's in-process path (fallback, in-process device) too
            inline = InlineSession(SessionMeta(Op.ECDH, alg))
            assert inline.perform(scalar + peer, b"", b"", True) == secret
            assert inline.perform(scalar + peer) == full
    finally:
        await workers.aclose()


def test_x25519_derive_only_matches_cryptography_for_any_u():
    # libsodium computes it (no public key): same clamping, same masked top bit
    for _ in range(32):
        scalar, u = os.urandom(32), bytearray(os.urandom(32))
        u[31] |= 0x80
        try:
            want = x25519.X25519PrivateKey.from_private_bytes(scalar).exchange(
                x25519.X25519PublicKey.from_public_bytes(bytes(u)))
        except ValueError:
            continue
        assert crypto.perform(Op.ECDH, Alg.X25519, b"", b"", scalar + bytes(u), secret_only=True) == want
    # a small-order point (all-zero secret) is still the request's fault
    with pytest.raises(crypto.CryptoError) as err:
        crypto.perform(Op.ECDH, Alg.X25519, b"", b"", os.urandom(32) + bytes(32), secret_only=True)
    assert err.value.kind is crypto.CryptoError.Kind.INVALID_INPUT
    with pytest.raises(CryptoOpError):
        SodiumResource("na").execute_inline(
            CryptoJob(Op.ECDH, Alg.X25519, b"", b"", os.urandom(32) + bytes(32), secret_only=True))


def test_keygen_against_the_base_point_and_the_keyless_form():
    # keygen (the base point) derive-only: the public key is the "secret" there
    scalar = os.urandom(32)
    base = b"\x09" + bytes(31)
    full = crypto.perform(Op.ECDH, Alg.X25519, b"", b"", scalar + base)
    assert crypto.perform(Op.ECDH, Alg.X25519, b"", b"", scalar + base, secret_only=True) == full[32:]
    # the keyless form has nothing to skip: the full result (it then does not
    # fit a secret-only dst: the host fails it, as any result too long)
    peer = x25519.X25519PrivateKey.generate().public_key().public_bytes_raw()
    assert len(crypto.perform(Op.ECDH, Alg.X25519, b"", b"", peer, secret_only=True)) == 64


def test_sodium_keygen_against_the_base_point_is_one_fixed_base_multiplication(monkeypatch):
    """A key-share refill's keygen (scalar || u = 9) on the sodium resource:
    X25519(k, 9) is the public key, so one fixed-base multiplication, no
    general one (the libsodium calls are counted, not replaced)."""
    import nacl.bindings

    from vcrypto.host.resources import sodium as sodium_mod
    calls = []

    class Counting:
        def __getattr__(self, name):
            fn = getattr(nacl.bindings, name)
            if not name.startswith("crypto_scalarmult"):
                return fn
            return lambda *a: calls.append(name) or fn(*a)

    monkeypatch.setattr(sodium_mod, "sodium", Counting())
    scalar = os.urandom(32)
    keygen = CryptoJob(Op.ECDH, Alg.X25519, b"", b"", scalar + b"\x09" + bytes(31))
    res = SodiumResource("na")
    assert res.execute_inline(keygen) == OpensslResource("o").execute_inline(keygen)
    assert calls == ["crypto_scalarmult_base"]
    calls.clear()
    _s, peer = _peer(Alg.X25519)
    derive = CryptoJob(Op.ECDH, Alg.X25519, b"", b"", scalar + peer, secret_only=True)
    assert res.execute_inline(derive) == OpensslResource("o").execute_inline(derive)
    assert calls == ["crypto_scalarmult"]  # derive-only: no public key either

"""The proxy's side of the crypto seam: counting, per-op fallback, provider choice at start."""
from __future__ import annotations

import os

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, x25519

from vcproxy.config import parse_config
from vcproxy.proxy._tlsglue import CountingProvider, FallbackProvider, ProviderUnavailable, make_provider
from vcproxy.tls import CryptoProviderError, IllegalParameter, InlineProvider


class BrokenEngine(InlineProvider):
    """An engine whose every op fails the way a dead device does (a fault to inject, not a mock)."""

    name = "vcrypto"

    async def key_exchange(self, group, peer_public, *, private_key=None):
        if len(peer_public) != 32:  # validated before submitting, as VcryptoProvider does
            raise IllegalParameter("x25519 key share is malformed")
        raise CryptoProviderError("device lost")

    async def sign(self, key, scheme, message):
        raise CryptoProviderError("device lost")

    def aead(self, suite_alg, key):
        inner = super().aead(suite_alg, key)

        class Failing(type(inner)):
            async def seal_many(self, items):
                raise CryptoProviderError("device lost")

        failing = Failing.__new__(Failing)
        failing.alg, failing._cipher = inner.alg, inner._cipher
        return failing


def peer_share() -> bytes:
    return x25519.X25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_pem() -> bytes:
    return ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


async def test_counting_provider_counts_each_op_under_its_provider():
    counts: list[tuple[str, str]] = []
    p = CountingProvider(InlineProvider(), lambda op, prov, n: counts.extend([(op, prov)] * n))
    own, shared = await p.key_exchange("x25519", peer_share())
    assert len(own) == 32 and len(shared) == 32
    key = p.load_signing_key(key_pem())
    await p.sign(key, "ecdsa_secp256r1_sha256", b"m" * 100)
    aead = p.aead("aes-128-gcm", os.urandom(16))
    items = [(os.urandom(12), b"aad", b"x" * 3000) for _ in range(3)]
    sealed = await aead.seal_many(items)
    opened = await aead.open_many([(n, a, c) for (n, a, _), c in zip(items, sealed)])
    assert opened == [b"x" * 3000] * 3
    aead.seal(os.urandom(12), b"", b"small")
    assert counts == [("ecdh", "inline"), ("sign", "inline")] + [("aead_seal", "inline")] * 3 \
        + [("aead_open", "inline")] * 3 + [("aead_seal", "inline")]


async def test_fallback_provider_redoes_failed_ops_inline_and_counts_them():
    fallbacks: list[tuple[str, str]] = []
    p = FallbackProvider(BrokenEngine(), InlineProvider(), lambda op, reason: fallbacks.append((op, reason)))
    own, shared = await p.key_exchange("x25519", peer_share())
    assert len(shared) == 32
    key = p.load_signing_key(key_pem())
    sig = await p.sign(key, "ecdsa_secp256r1_sha256", b"message")
    assert sig[0] == 0x30  # DER ECDSA signature from the inline backup
    aead = p.aead("aes-128-gcm", os.urandom(16))
    [ct] = await aead.seal_many([(os.urandom(12), b"", b"data")])
    assert len(ct) == 4 + 16
    assert fallbacks == [("ecdh", "CryptoProviderError"), ("sign", "CryptoProviderError"),
                         ("aead_seal", "CryptoProviderError")]
    # a peer's fault is not a provider failure: no retry, no fallback
    with pytest.raises(IllegalParameter):
        await p.key_exchange("x25519", b"\x00" * 31)
    assert len(fallbacks) == 3


async def test_wrapped_sessions_say_whether_aclose_releases_anything():
    # The TLS stream skips aclose (and its shielded scope) for sessions that
    # hold nothing: the wrappers must report their inner sessions' answer.
    class Holding(InlineProvider):
        def aead(self, suite_alg, key):
            inner = super().aead(suite_alg, key)

            class Held(type(inner)):
                async def aclose(self):
                    pass

            held = Held.__new__(Held)
            held.alg, held._cipher = inner.alg, inner._cipher
            return held

    key = os.urandom(16)
    count = lambda *a: None  # noqa: E731
    assert InlineProvider().aead("aes-128-gcm", key).needs_aclose is False
    assert CountingProvider(InlineProvider(), count).aead("aes-128-gcm", key).needs_aclose is False
    assert CountingProvider(Holding(), count).aead("aes-128-gcm", key).needs_aclose is True
    inline = FallbackProvider(InlineProvider(), InlineProvider(), count)
    assert inline.aead("aes-128-gcm", key).needs_aclose is False
    mixed = FallbackProvider(Holding(), InlineProvider(), count)
    assert mixed.aead("aes-128-gcm", key).needs_aclose is True


def config(fallback: str):
    return parse_config(yaml.safe_dump({
        "listeners": [{"port": 1, "tls": {"enabled": False}}],
        "upstreams": {"d": {"servers": ["127.0.0.1:9"]}}, "routes": [{"upstream": "d"}],
        "crypto": {"provider": "vcrypto", "fallback": fallback}}))


@pytest.mark.parametrize("fallback", ["none", "startup", "per_op"])
async def test_unreachable_engine_at_start(tmp_path, fallback):
    fallbacks: list = []
    socket_path = str(tmp_path / "no-backend.sock")
    args = (lambda *a: None, lambda op, reason: fallbacks.append((op, reason)), socket_path)
    if fallback == "none":
        with pytest.raises(ProviderUnavailable, match="unreachable"):
            await make_provider(config(fallback), *args)
        return
    provider = await make_provider(config(fallback), *args)
    if fallback == "startup":
        assert provider.name == "inline" and fallbacks == [("startup", "engine_unreachable")]
    else:  # per_op: keep the engine (its frontend re-attaches later), redo failures inline
        assert provider.name == "vcrypto" and isinstance(provider.inner, FallbackProvider)
        own, shared = await provider.key_exchange("x25519", peer_share())
        assert len(shared) == 32


async def test_derive_and_sign_is_counted_and_falls_back_op_by_op():
    """A pre-generated share's derive + CertificateVerify signature (one seam
    call): counted as one ecdh and one sign; a failing engine redoes each op
    with its own per-op fallback, and the secret is the share's."""
    share = InlineProvider().key_share("x25519")
    peer = x25519.X25519PrivateKey.generate()
    peer_pub = peer.public_key().public_bytes_raw()
    want = peer.exchange(x25519.X25519PublicKey.from_public_bytes(share.public))
    counts: list[tuple[str, str]] = []
    counting = CountingProvider(InlineProvider(), lambda op, prov: counts.append((op, prov)))
    key = counting.load_signing_key(key_pem())
    shared, sig = await counting.derive_and_sign("x25519", peer_pub, share.scalar, key,
                                                 "ecdsa_secp256r1_sha256", b"m")
    assert shared == want and sig[0] == 0x30
    assert counts == [("ecdh", "inline"), ("sign", "inline")]
    fallbacks: list[tuple[str, str]] = []
    p = FallbackProvider(BrokenEngine(), InlineProvider(), lambda op, reason: fallbacks.append((op, reason)))
    key = p.load_signing_key(key_pem())
    shared, sig = await p.derive_and_sign("x25519", peer_pub, share.scalar, key,
                                          "ecdsa_secp256r1_sha256", b"m")
    assert shared == want and sig[0] == 0x30
    assert fallbacks == [("ecdh", "CryptoProviderError"), ("sign", "CryptoProviderError")]
    with pytest.raises(IllegalParameter):  # a peer's fault: no fallback
        await p.derive_and_sign("x25519", b"\x00" * 31, share.scalar, key, "ecdsa_secp256r1_sha256", b"m")
    assert len(fallbacks) == 2

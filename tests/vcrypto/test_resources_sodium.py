"""``sodium`` (libsodium via PyNaCl) against ``openssl`` (`cryptography`):
two implementations, the same contract. Same inputs give the same outputs,
each opens the other's ciphertexts, each side's key exchange and signature
verifies on the other; the pool routes by real capability."""
from __future__ import annotations

import os

import nacl.bindings
import pytest
import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519

from tests.vcrypto._pool_fixtures import ecdh_case, open_case, seal_case, sign_case
from vcrypto.host.scheduling._core import PolicyKind
from vcrypto.host.scheduling._pool import PoolConfigError, build_scheduler, parse_pool_config
from vcrypto.host.resources import CryptoJob, CryptoOpError, OpensslResource, SodiumResource
from vcrypto.host.resources.sodium import (AES256GCM_AVAILABLE, SODIUM_CAPABILITIES,
                                           ed25519_seed_from_pkcs8)
from vcrypto.ops import Alg, Op

SODIUM = SodiumResource()
OPENSSL = OpensslResource()
AEAD = [Alg.CHACHA20_POLY1305] + ([Alg.AES_256_GCM] if AES256GCM_AVAILABLE else [])


def test_capabilities_are_libsodiums_only():
    assert (Op.ECDH, Alg.X25519) in SODIUM.capabilities
    assert (Op.SIGN, Alg.ED25519) in SODIUM.capabilities
    for op in (Op.AEAD_SEAL, Op.AEAD_OPEN):
        assert (op, Alg.CHACHA20_POLY1305) in SODIUM.capabilities
        assert (op, Alg.AES_128_GCM) not in SODIUM.capabilities
        assert ((op, Alg.AES_256_GCM) in SODIUM.capabilities) == AES256GCM_AVAILABLE
    assert not any(alg in (Alg.SECP256R1, Alg.SECP384R1) or alg.value.startswith(("rsa", "ecdsa"))
                   for _op, alg in SODIUM.capabilities)
    with pytest.raises(ValueError, match="libsodium cannot do sign:rsa_pss_rsae_sha256"):
        SodiumResource(capabilities=frozenset({(Op.SIGN, Alg.RSA_PSS_RSAE_SHA256)}))
    with pytest.raises(CryptoOpError, match="not_supported"):
        SODIUM.execute_inline(sign_case(1).job)     # ECDSA: not libsodium's


@pytest.mark.parametrize("alg", AEAD)
@pytest.mark.parametrize("size", [0, 1, 300, 16384])
def test_aead_same_output_and_opens_each_others(alg, size):
    case = seal_case(size + 3, alg, size)
    ours, theirs = SODIUM.execute_inline(case.job), OPENSSL.execute_inline(case.job)
    case.check(ours)
    assert ours == theirs
    plain = bytes(case.job.src)
    for sealed_by, opener in ((ours, OPENSSL), (theirs, SODIUM)):
        job = CryptoJob(Op.AEAD_OPEN, alg, case.job.key, b"", sealed_by, case.job.iv, case.job.aad)
        assert opener.execute_inline(job) == plain
    # A flipped bit fails on both, the same way (BAD_MESSAGE).
    bad = bytes([ours[0] ^ 1]) + ours[1:] if ours else b""
    for res in (SODIUM, OPENSSL):
        job = CryptoJob(Op.AEAD_OPEN, alg, case.job.key, b"", bad or b"\0" * 15, case.job.iv,
                        case.job.aad)
        with pytest.raises(CryptoOpError) as err:
            res.execute_inline(job)
        assert err.value.kind is CryptoOpError.Kind.BAD_MESSAGE


@pytest.mark.parametrize("alg", AEAD)
def test_aead_open_of_memoryview_src_and_bad_lengths(alg):
    case = open_case(5, alg)
    job = CryptoJob(Op.AEAD_OPEN, alg, case.job.key, b"", memoryview(bytes(case.job.src)),
                    case.job.iv)
    case.check(SODIUM.execute_inline(job))
    for key, iv in ((b"k" * 16, case.job.iv), (case.job.key, b"iv")):
        with pytest.raises(CryptoOpError) as err:
            SODIUM.execute_inline(CryptoJob(Op.AEAD_SEAL, alg, key, b"", b"x", iv))
        assert err.value.kind is CryptoOpError.Kind.INVALID_INPUT


def test_x25519_each_sides_result_checks_on_the_other():
    case = ecdh_case(1)
    case.check(SODIUM.execute_inline(case.job))       # checked with `cryptography`
    # and openssl's result checked with libsodium
    peer_sk = os.urandom(32)
    peer_pk = nacl.bindings.crypto_scalarmult_base(peer_sk)
    result = OPENSSL.execute_inline(CryptoJob(Op.ECDH, Alg.X25519, b"", b"", peer_pk))
    assert nacl.bindings.crypto_scalarmult(peer_sk, result[:32]) == result[32:]
    # The keyed form (TLS 1.2: own scalar || peer key): the same bytes from both,
    # against the base point (keygen) and against a peer's key (derive).
    scalar = os.urandom(32)
    for peer in ((9).to_bytes(32, "little"), peer_pk):
        keyed = CryptoJob(Op.ECDH, Alg.X25519, b"", b"", scalar + peer)
        assert SODIUM.execute_inline(keyed) == OPENSSL.execute_inline(keyed)
    # A small-order point (all-zero secret) is the request's fault on both.
    for res in (SODIUM, OPENSSL):
        with pytest.raises(CryptoOpError) as err:
            res.execute_inline(CryptoJob(Op.ECDH, Alg.X25519, b"", b"", bytes(32)))
        assert err.value.kind is CryptoOpError.Kind.INVALID_INPUT


def test_ed25519_same_signature_as_openssl():
    for i in range(3):
        case = sign_case(i, Alg.ED25519)
        ours = SODIUM.execute_inline(case.job)
        case.check(ours)
        assert ours == OPENSSL.execute_inline(case.job)   # Ed25519 is deterministic


def test_ed25519_pkcs8_parsing():
    key = ed25519.Ed25519PrivateKey.generate()
    seed = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                             serialization.NoEncryption())
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    assert ed25519_seed_from_pkcs8(der) == seed
    # RFC 8410 §10.3's v2 example shape: version 1, [1] publicKey appended.
    pub = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    body = der[2:].replace(b"\x02\x01\x00", b"\x02\x01\x01", 1) + b"\x81\x21\x00" + pub
    assert ed25519_seed_from_pkcs8(bytes([0x30, len(body)]) + body) == seed
    x_der = x25519.X25519PrivateKey.generate().private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())
    for bad in (b"", der[:-1], der + b"\0", x_der, sign_case(0).job.key):
        with pytest.raises(CryptoOpError, match="RFC 8410"):
            ed25519_seed_from_pkcs8(bad)


def test_pool_config_narrows_wildcards_and_rejects_what_sodium_cannot_do():
    cfg = parse_pool_config({"resources": [{"name": "s", "kind": "sodium"}]})
    assert cfg.resources[0].capabilities == SODIUM_CAPABILITIES
    cfg = parse_pool_config({"resources": [
        {"name": "s", "kind": "sodium", "capabilities": ["aead_seal:*", "ecdh:x25519"]}]})
    assert cfg.resources[0].capabilities == {(Op.ECDH, Alg.X25519)} | {
        (Op.AEAD_SEAL, a) for a in AEAD}
    with pytest.raises(PoolConfigError,
                       match=r"pool.resources\[0\].capabilities: kind sodium cannot do "
                             r"sign:ecdsa_secp256r1_sha256"):
        parse_pool_config({"resources": [
            {"name": "s", "kind": "sodium", "capabilities": ["sign:ecdsa_secp256r1_sha256"]}]})
    with pytest.raises(PoolConfigError, match=r"pool.failover.balance: unknown balance 'random'"):
        parse_pool_config({"resources": [{"name": "a", "kind": "openssl"}],
                           "groups": [{"name": "g", "resources": ["a"]},
                                      {"name": "h", "resources": ["a"]}],
                           "policy": "failover",
                           "failover": {"primary": "g", "secondary": "h", "balance": "random"}})


async def test_default_pool_routes_by_capability_and_takes_turns():
    scheduler = build_scheduler(None)
    assert scheduler.core.policy is PolicyKind.FAILOVER
    async with scheduler:
        cases = ([ecdh_case(i) for i in range(8)] + [seal_case(i, Alg.CHACHA20_POLY1305)
                                                     for i in range(8)]
                 + [sign_case(i) for i in range(4)] + [seal_case(i) for i in range(4)])
        for case in cases:
            result = scheduler.submit_now(case.job)
            if not isinstance(result, bytes):
                result = await scheduler.submit(case.job, result)
            case.check(result)
        s = scheduler.stats().resources
    # x25519 and chacha in turn on both implementations (8 + 8 -> 8 each);
    # ECDSA P-256 and AES-128-GCM on openssl only: libsodium cannot do them.
    assert s["sodium"].completed == 8
    assert s["openssl"].completed == 8 + 8
    assert s["spare"].completed == 0
    assert sum(r.spills for r in s.values()) == 0


async def test_default_pool_spills_to_the_workers_secondary_when_main_is_full():
    scheduler = build_scheduler(None)
    async with scheduler:
        core = scheduler.core
        # Fill both primary resources' slots as long-running jobs would.
        from vcrypto.host.scheduling._core import Run
        for name in ("sodium", "openssl"):
            for _ in range(scheduler.resources[name].max_inflight):
                core.started(Run(name), Op.ECDH, retry=False)
        case = ecdh_case(99)
        with trio.fail_after(30):
            case.check(await scheduler.submit(case.job))
        s = scheduler.stats().resources
        assert s["spare"].completed == 1 and s["spare"].spills == 1

"""The post-quantum hybrid key exchange as a vcrypto op (draft-ietf-tls-ecdhe-mlkem):
the shared implementation (``vcrypto.crypto``, used by the host's openssl and
workers resources and the engine's in-process fallback) against a client
written from the draft, its length and key checks, and where it may run."""
from __future__ import annotations

import pytest

from tests.tls.miniclient import ClientShare
from vcrypto import crypto
from vcrypto.engine.contract._region import ALG_CODE
from vcrypto.host.resources.sodium import SODIUM_CAPABILITIES
from vcrypto.ops import (ECDH_ALGS, ECDH_PUBLIC_BYTES, HYBRID_KX_ALGS, KX_PEER_BYTES, Alg, Op,
                         max_dst_bytes)
from vcrypto.wire import virtio_crypto as vc

HYBRIDS = [Alg.X25519MLKEM768, Alg.SECP256R1MLKEM768]
SEED = bytes(range(64))


@pytest.mark.parametrize("alg", HYBRIDS)
@pytest.mark.parametrize("way", ["perform", "prepared"])
def test_hybrid_op_matches_an_independent_client(alg, way):
    kx = ClientShare(alg.value, mlkem_seed=SEED)
    assert len(kx.share) == KX_PEER_BYTES[alg]
    if way == "perform":
        out = crypto.perform(Op.ECDH, alg, b"", b"", kx.share)
    else:
        out = crypto.Prepared(Op.ECDH, alg).perform(kx.share)
    assert len(out) == max_dst_bytes(Op.ECDH, alg, len(kx.share)) == ECDH_PUBLIC_BYTES[alg] + 64
    own, shared = crypto.ecdh_split(alg, out)
    assert shared == kx.shared(own)


@pytest.mark.parametrize("alg", HYBRIDS)
@pytest.mark.parametrize("cut", [-1, 1, 1184, 65])
def test_hybrid_op_refuses_other_lengths_and_bad_keys(alg, cut):
    share = ClientShare(alg.value).share
    bad = share[:-1] if cut == -1 else share + b"\x00" * cut
    with pytest.raises(crypto.CryptoError) as info:
        crypto.perform(Op.ECDH, alg, b"", b"", bad)
    assert info.value.kind is crypto.CryptoError.Kind.INVALID_INPUT
    not_reduced = (share[:65] + b"\xff" * 1184 if alg is Alg.SECP256R1MLKEM768
                   else b"\xff" * 1184 + share[1184:])
    with pytest.raises(crypto.CryptoError, match="ML-KEM-768"):
        crypto.perform(Op.ECDH, alg, b"", b"", not_reduced)


def test_hybrids_are_in_every_table():
    assert HYBRID_KX_ALGS == set(HYBRIDS) and HYBRID_KX_ALGS <= ECDH_ALGS
    assert all(alg in ALG_CODE for alg in ECDH_ALGS)  # the engine slot can carry them
    for alg in HYBRIDS:  # the vendor key-exchange service names them (0x8002, 0x8003)
        p = vc.decode_session_create(vc.encode_session_create(vc.SessionParams(Op.ECDH, alg)))
        assert (p.op, p.alg) == (Op.ECDH, alg)
    # libsodium has no ML-KEM: it must not claim a hybrid, so capability
    # routing sends them to openssl
    assert not {(Op.ECDH, a) for a in HYBRIDS} & SODIUM_CAPABILITIES

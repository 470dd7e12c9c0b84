import pytest

from vcrypto.ops import ALL_CAPABILITIES, Alg, Op, parse_capabilities


def test_parse_capabilities_forms():
    assert parse_capabilities(["*"]) == ALL_CAPABILITIES
    assert parse_capabilities(["aead_seal:*"]) == {
        (Op.AEAD_SEAL, a) for a in (Alg.AES_128_GCM, Alg.AES_256_GCM, Alg.CHACHA20_POLY1305)
    }
    assert parse_capabilities(["sign:ed25519"]) == {(Op.SIGN, Alg.ED25519)}


@pytest.mark.parametrize("entry", ["sign", "nope:*", "sign:aes-128-gcm", "ecdh:bogus"])
def test_parse_capabilities_rejects(entry):
    with pytest.raises(ValueError, match="capability"):
        parse_capabilities([entry])

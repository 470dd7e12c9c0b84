import pytest

from tests.tls.certs import make_cert
from vcproxy.tls import BadRecordMac, CertificateEntry, IllegalParameter, InlineProvider, ServerConfig


def test_certificate_entry_names_and_sni_selection():
    a = CertificateEntry.from_pem(*(lambda c: (c.chain_pem, c.key_pem))(make_cert("ecdsa-p256")))
    b_cert = make_cert("rsa-2048", sans=("api.test",))
    b = CertificateEntry.from_pem(b_cert.chain_pem, b_cert.key_pem)
    assert a.names == ("localhost", "*.example.com") and len(a.chain_der) == 2
    assert b.key_type == "rsa"
    cfg = ServerConfig([a, b])
    assert cfg.select_certificates("api.test") == [b]
    assert cfg.select_certificates("www.example.com") == [a]
    assert cfg.select_certificates("a.b.example.com") == [a, b]  # no match: default first
    assert cfg.select_certificates(None)[0] is a


def test_key_must_match_certificate():
    c1, c2 = make_cert("ecdsa-p256"), make_cert("ecdsa-p256")
    with pytest.raises(ValueError, match="does not match"):
        CertificateEntry.from_pem(c1.chain_pem, c2.key_pem)


@pytest.mark.parametrize("field,value", [("groups", ["x448"]), ("cipher_suites", ["TLS_NULL"]),
                                         ("pipeline_depth", 17)])
def test_config_rejects_bad_values_naming_the_field(field, value):
    c = make_cert("ed25519")
    with pytest.raises(ValueError, match=field):
        ServerConfig([CertificateEntry.from_pem(c.chain_pem, c.key_pem)], **{field: value})


async def test_inline_provider_ops():
    p = InlineProvider()
    from cryptography.hazmat.primitives.asymmetric import x25519
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
    peer = x25519.X25519PrivateKey.generate()
    pub, shared = await p.key_exchange("x25519", peer.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))
    assert peer.exchange(x25519.X25519PublicKey.from_public_bytes(pub)) == shared
    with pytest.raises(IllegalParameter):
        await p.key_exchange("secp256r1", b"\x04" + b"\x00" * 64)
    s = p.aead("aes-128-gcm", b"k" * 16)
    ct = await s.seal_many([(b"n" * 12, b"a", b"hello")] * 3)
    assert await s.open_many([(b"n" * 12, b"a", c) for c in ct]) == [b"hello"] * 3
    with pytest.raises(BadRecordMac):
        s.open(b"n" * 12, b"b", ct[0])
    c = make_cert("ecdsa-p256")
    key = p.load_signing_key(c.key_pem)
    sig = await p.sign(key, "ecdsa_secp256r1_sha256", b"m")
    assert sig[0] == 0x30

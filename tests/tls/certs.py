"""Test certificates made with `cryptography` at session start (no key files committed)."""
from __future__ import annotations

import dataclasses
import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID


@dataclasses.dataclass(frozen=True)
class TestCert:
    kind: str
    chain_pem: bytes      # leaf, then intermediate
    key_pem: bytes
    ca_pem: bytes         # the root to trust


def _key(kind: str):
    if kind == "ecdsa-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "ecdsa-p384":
        return ec.generate_private_key(ec.SECP384R1())
    if kind == "rsa-2048":
        return rsa.generate_private_key(65537, 2048)
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(kind)


def _cert(subject: str, pub, issuer: str, issuer_key, *, ca: bool, sans=()):
    now = datetime.datetime.now(datetime.timezone.utc)
    b = (x509.CertificateBuilder()
         .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
         .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
         .public_key(pub).serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(hours=1))
         .not_valid_after(now + datetime.timedelta(days=2))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(s) for s in sans]),
                            critical=False)
    algo = None if isinstance(issuer_key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return b.sign(issuer_key, algo)


_ROOT = None


def _root():
    global _ROOT
    if _ROOT is None:
        root_key = ec.generate_private_key(ec.SECP256R1())
        root = _cert("vcproxy test root", root_key.public_key(), "vcproxy test root", root_key, ca=True)
        inter_key = ec.generate_private_key(ec.SECP256R1())
        inter = _cert("vcproxy test intermediate", inter_key.public_key(), "vcproxy test root",
                      root_key, ca=True)
        _ROOT = (root, inter, inter_key)
    return _ROOT


def make_cert(kind: str, sans=("localhost", "*.example.com")) -> TestCert:
    """A leaf of ``kind`` issued by a shared intermediate, under a shared root."""
    root, inter, inter_key = _root()
    key = _key(kind)
    leaf = _cert(sans[0], key.public_key(), "vcproxy test intermediate", inter_key,
                 ca=False, sans=sans)
    pem = serialization.Encoding.PEM
    return TestCert(
        kind,
        leaf.public_bytes(pem) + inter.public_bytes(pem),
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
        root.public_bytes(pem),
    )

"""Reference checks computed with `cryptography` in the test process: shared by
the resource tests and the end-to-end host tests."""
from __future__ import annotations

import functools

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa, x25519

from vcrypto.ops import Alg


@functools.cache
def _rsa():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@functools.cache
def _ec(curve_name):
    return ec.generate_private_key({"p256": ec.SECP256R1(), "p384": ec.SECP384R1()}[curve_name])


@functools.cache
def _ed():
    return ed25519.Ed25519PrivateKey.generate()


def key_for(alg: Alg):
    if alg is Alg.ECDSA_SECP256R1_SHA256:
        return _ec("p256")
    if alg is Alg.ECDSA_SECP384R1_SHA384:
        return _ec("p384")
    if alg is Alg.ED25519:
        return _ed()
    return _rsa()


KEYS = key_for


def der_of(alg: Alg) -> bytes:
    return key_for(alg).private_bytes(serialization.Encoding.DER,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())


_HASH = {"sha256": hashes.SHA256, "sha384": hashes.SHA384, "sha512": hashes.SHA512}


def check_signature(alg: Alg, msg: bytes, sig: bytes) -> None:
    """Raise InvalidSignature unless sig verifies under the test's public key."""
    pub = key_for(alg).public_key()
    name = alg.value
    if name.startswith("ecdsa"):
        pub.verify(sig, msg, ec.ECDSA(_HASH[name[-6:]]()))
    elif alg is Alg.ED25519:
        pub.verify(sig, msg)
    elif name.startswith("rsa_pss"):
        h = _HASH[name[-6:]]()
        pub.verify(sig, msg, padding.PSS(mgf=padding.MGF1(h), salt_length=h.digest_size), h)
    else:
        pub.verify(sig, msg, padding.PKCS1v15(), _HASH[name[-6:]]())


def ecdh_peer(alg: Alg):
    """(private key, wire public bytes) of a fresh test-side peer."""
    if alg is Alg.X25519:
        priv = x25519.X25519PrivateKey.generate()
        return priv, priv.public_key().public_bytes(serialization.Encoding.Raw,
                                                    serialization.PublicFormat.Raw)
    curve = ec.SECP256R1() if alg is Alg.SECP256R1 else ec.SECP384R1()
    priv = ec.generate_private_key(curve)
    return priv, priv.public_key().public_bytes(serialization.Encoding.X962,
                                                serialization.PublicFormat.UncompressedPoint)


ECDH_PUB_BYTES = {Alg.X25519: 32, Alg.SECP256R1: 65, Alg.SECP384R1: 97}


def check_ecdh_result(alg: Alg, priv, out: bytes) -> None:
    n = ECDH_PUB_BYTES[alg]
    own_pub, shared = out[:n], out[n:]
    if alg is Alg.X25519:
        expect = priv.exchange(x25519.X25519PublicKey.from_public_bytes(own_pub))
    else:
        curve = ec.SECP256R1() if alg is Alg.SECP256R1 else ec.SECP384R1()
        expect = priv.exchange(ec.ECDH(), ec.EllipticCurvePublicKey.from_encoded_point(curve, own_pub))
    assert shared == expect, f"{alg.value}: shared secret differs"


def check_ecdh(alg: Alg, run) -> None:
    priv, pub = ecdh_peer(alg)
    check_ecdh_result(alg, priv, run(pub))


def faulty_rsa_key(real: rsa.RSAPrivateKey) -> rsa.RSAPrivateKey:
    """An RSA key whose signatures are corrupted (what a CRT fault produces):
    for the re-verification tests of every in-process crypto path."""

    class FaultyKey(rsa.RSAPrivateKey):
        key_size = real.key_size

        def sign(self, data, pad, algorithm):
            sig = bytearray(real.sign(data, pad, algorithm))
            sig[-1] ^= 0x01
            return bytes(sig)

        def public_key(self):
            return real.public_key()

        def decrypt(self, *a):
            return real.decrypt(*a)

        def private_numbers(self):
            return real.private_numbers()

        def private_bytes(self, *a):
            return real.private_bytes(*a)

        def __copy__(self):
            return self

        def __deepcopy__(self, memo):
            return self

    return FaultyKey()

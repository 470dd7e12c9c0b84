"""The crypto operations vcrypto offloads: the vocabulary every layer shares.

These are *semantic* names. The wire formats (``vcrypto.wire``) map them to
virtio-crypto 1.2 opcodes/algorithm ids where the spec defines them, and to
documented vendor extensions where it does not (ECDH, Ed25519, RSA-PSS).
Nothing here does I/O or crypto.

Operations and their data contract (what ``src`` holds, what ``dst`` gets):

=============  =================================  ===============================
op             src                                dst
=============  =================================  ===============================
AEAD_SEAL      plaintext (iv, aad separate)       ciphertext || 16-byte tag
AEAD_OPEN      ciphertext || tag                  plaintext (status BADMSG on tag
                                                  mismatch)
ECDH           peer public key (wire encoding:    own public key || shared secret
               X25519 raw 32 B, P-256/384 SEC1    (keygen + derive in one op: the
               uncompressed point), or            host keeps no per-request key)
               own private scalar || peer key     (TLS 1.2: the requester keeps its
               (X25519 32, P-256 32, P-384 48 B)  ephemeral scalar between keygen,
                                                  against the base point, and derive)
SIGN           message to sign (not a digest)     signature (DER for ECDSA)
=============  =================================  ===============================
"""
from __future__ import annotations

import enum


class Op(enum.Enum):
    # Identity hash (members are singletons): Enum's own __hash__ is Python
    # code, and ops/algs key dicts several times per request on the data path.
    __hash__ = object.__hash__

    AEAD_SEAL = "aead_seal"
    AEAD_OPEN = "aead_open"
    ECDH = "ecdh"
    SIGN = "sign"


class Alg(enum.Enum):
    __hash__ = object.__hash__   # as Op's

    # AEAD
    AES_128_GCM = "aes-128-gcm"
    AES_256_GCM = "aes-256-gcm"
    CHACHA20_POLY1305 = "chacha20-poly1305"
    # key exchange groups
    X25519 = "x25519"
    SECP256R1 = "secp256r1"
    SECP384R1 = "secp384r1"
    # signature schemes (names follow TLS 1.3 SignatureScheme where one exists)
    ECDSA_SECP256R1_SHA256 = "ecdsa_secp256r1_sha256"
    ECDSA_SECP384R1_SHA384 = "ecdsa_secp384r1_sha384"
    RSA_PSS_RSAE_SHA256 = "rsa_pss_rsae_sha256"
    RSA_PSS_RSAE_SHA384 = "rsa_pss_rsae_sha384"
    RSA_PSS_RSAE_SHA512 = "rsa_pss_rsae_sha512"
    RSA_PKCS1_SHA256 = "rsa_pkcs1_sha256"
    RSA_PKCS1_SHA384 = "rsa_pkcs1_sha384"
    RSA_PKCS1_SHA512 = "rsa_pkcs1_sha512"
    ED25519 = "ed25519"


AEAD_ALGS = frozenset({Alg.AES_128_GCM, Alg.AES_256_GCM, Alg.CHACHA20_POLY1305})
ECDH_ALGS = frozenset({Alg.X25519, Alg.SECP256R1, Alg.SECP384R1})
SIGN_ALGS = frozenset(Alg) - AEAD_ALGS - ECDH_ALGS

#: Which algorithms each op accepts. A request whose (op, alg) is not here is
#: invalid whatever resource it would go to.
VALID: dict[Op, frozenset[Alg]] = {
    Op.AEAD_SEAL: AEAD_ALGS,
    Op.AEAD_OPEN: AEAD_ALGS,
    Op.ECDH: ECDH_ALGS,
    Op.SIGN: SIGN_ALGS,
}

AEAD_KEY_BYTES = {Alg.AES_128_GCM: 16, Alg.AES_256_GCM: 32, Alg.CHACHA20_POLY1305: 32}
AEAD_TAG_BYTES = 16
AEAD_IV_BYTES = 12

Capability = tuple[Op, Alg]

ALL_CAPABILITIES: frozenset[Capability] = frozenset(
    (op, alg) for op, algs in VALID.items() for alg in algs
)


def is_valid(op: Op, alg: Alg) -> bool:
    return alg in VALID[op]


def parse_capabilities(spec: list[str]) -> frozenset[Capability]:
    """Parse config strings ``"op:alg"``, ``"op:*"`` or ``"*"`` into capabilities.

    Raises ``ValueError`` naming the bad entry; callers add the config path.
    """
    caps: set[Capability] = set()
    for entry in spec:
        if entry == "*":
            caps |= ALL_CAPABILITIES
            continue
        op_name, sep, alg_name = entry.partition(":")
        if not sep:
            raise ValueError(f"capability {entry!r}: expected 'op:alg', 'op:*' or '*'")
        try:
            op = Op(op_name)
        except ValueError:
            raise ValueError(f"capability {entry!r}: unknown op {op_name!r} "
                             f"(one of {', '.join(o.value for o in Op)})") from None
        if alg_name == "*":
            caps |= {(op, a) for a in VALID[op]}
            continue
        try:
            alg = Alg(alg_name)
        except ValueError:
            raise ValueError(f"capability {entry!r}: unknown algorithm {alg_name!r}") from None
        if not is_valid(op, alg):
            raise ValueError(f"capability {entry!r}: {alg.value} is not valid for {op.value}")
        caps.add((op, alg))
    return frozenset(caps)

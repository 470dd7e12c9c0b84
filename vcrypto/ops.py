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
               hybrid (draft-ietf-tls-ecdhe-      ML-KEM-768 ciphertext and own
               mlkem): the client's share, ML-    ECDH key || ML-KEM secret and
               KEM-768 encapsulation key and      ECDH secret, each pair in the
               ECDH share (X25519MLKEM768: ML-    same order as src (Encaps + ECDH
               KEM first; SecP256r1MLKEM768:      in one op; no keyed form: the
               P-256 first)                       hybrids are TLS 1.3 only)
SIGN           message to sign (not a digest)     signature (DER for ECDSA)
CIPHER_*       AES-CBC input, a multiple of 16 B  output of the same length (no
               (iv 16 B separate)                 padding: the caller pads)
MAC            message                            full HMAC digest (20 / 32 B)
CHAIN_SEAL     plaintext (iv 16 B, aad separate)  AES-CBC ciphertext || HMAC over
                                                  aad || ciphertext (encrypt-
                                                  then-MAC, full digest)
CHAIN_OPEN     ciphertext || HMAC                 plaintext, after the HMAC over
                                                  aad || ciphertext verified
                                                  (status BADMSG on mismatch)
=============  =================================  ===============================

ECDH derive-only: a keyed-form request whose dst has room for the shared
secret alone (``ECDH_SECRET_BYTES``, ``ecdh_secret_only``) gets just the
secret. The requester already holds its public key (a pre-generated share, a
TLS 1.2 ServerKeyExchange), so the device skips recomputing it: one scalar
multiplication instead of two.

Keys: CIPHER the raw AES key; MAC the HMAC key (1..512 bytes); CHAIN the AES
key followed by the HMAC key (its length is the rest).
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
    CIPHER_ENCRYPT = "cipher_encrypt"
    CIPHER_DECRYPT = "cipher_decrypt"
    MAC = "mac"
    CHAIN_SEAL = "chain_seal"     # AES-CBC then HMAC (encrypt-then-MAC)
    CHAIN_OPEN = "chain_open"     # verify the HMAC, then AES-CBC decrypt


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
    # post-quantum hybrids (draft-ietf-tls-ecdhe-mlkem), named as in TLS
    X25519MLKEM768 = "X25519MLKEM768"
    SECP256R1MLKEM768 = "SecP256r1MLKEM768"
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
    # symmetric cipher, MAC and cipher+MAC chains (virtio-crypto sym/mac services)
    AES_128_CBC = "aes-128-cbc"
    AES_192_CBC = "aes-192-cbc"
    AES_256_CBC = "aes-256-cbc"
    HMAC_SHA1 = "hmac-sha1"
    HMAC_SHA256 = "hmac-sha256"
    AES_128_CBC_HMAC_SHA1 = "aes-128-cbc-hmac-sha1"
    AES_192_CBC_HMAC_SHA1 = "aes-192-cbc-hmac-sha1"
    AES_256_CBC_HMAC_SHA1 = "aes-256-cbc-hmac-sha1"
    AES_128_CBC_HMAC_SHA256 = "aes-128-cbc-hmac-sha256"
    AES_256_CBC_HMAC_SHA256 = "aes-256-cbc-hmac-sha256"


AEAD_ALGS = frozenset({Alg.AES_128_GCM, Alg.AES_256_GCM, Alg.CHACHA20_POLY1305})
HYBRID_KX_ALGS = frozenset({Alg.X25519MLKEM768, Alg.SECP256R1MLKEM768})
ECDH_ALGS = frozenset({Alg.X25519, Alg.SECP256R1, Alg.SECP384R1}) | HYBRID_KX_ALGS
CIPHER_ALGS = frozenset({Alg.AES_128_CBC, Alg.AES_192_CBC, Alg.AES_256_CBC})
MAC_ALGS = frozenset({Alg.HMAC_SHA1, Alg.HMAC_SHA256})
#: chain alg -> (its cipher alg, its MAC alg)
CHAIN_PARTS: dict[Alg, tuple[Alg, Alg]] = {
    Alg.AES_128_CBC_HMAC_SHA1: (Alg.AES_128_CBC, Alg.HMAC_SHA1),
    Alg.AES_192_CBC_HMAC_SHA1: (Alg.AES_192_CBC, Alg.HMAC_SHA1),
    Alg.AES_256_CBC_HMAC_SHA1: (Alg.AES_256_CBC, Alg.HMAC_SHA1),
    Alg.AES_128_CBC_HMAC_SHA256: (Alg.AES_128_CBC, Alg.HMAC_SHA256),
    Alg.AES_256_CBC_HMAC_SHA256: (Alg.AES_256_CBC, Alg.HMAC_SHA256),
}
CHAIN_ALGS = frozenset(CHAIN_PARTS)
SIGN_ALGS = frozenset(Alg) - AEAD_ALGS - ECDH_ALGS - CIPHER_ALGS - MAC_ALGS - CHAIN_ALGS

#: Which algorithms each op accepts. A request whose (op, alg) is not here is
#: invalid whatever resource it would go to.
VALID: dict[Op, frozenset[Alg]] = {
    Op.AEAD_SEAL: AEAD_ALGS,
    Op.AEAD_OPEN: AEAD_ALGS,
    Op.ECDH: ECDH_ALGS,
    Op.SIGN: SIGN_ALGS,
    Op.CIPHER_ENCRYPT: CIPHER_ALGS,
    Op.CIPHER_DECRYPT: CIPHER_ALGS,
    Op.MAC: MAC_ALGS,
    Op.CHAIN_SEAL: CHAIN_ALGS,
    Op.CHAIN_OPEN: CHAIN_ALGS,
}

AEAD_KEY_BYTES = {Alg.AES_128_GCM: 16, Alg.AES_256_GCM: 32, Alg.CHACHA20_POLY1305: 32}
AEAD_TAG_BYTES = 16
AEAD_IV_BYTES = 12
CIPHER_KEY_BYTES = {Alg.AES_128_CBC: 16, Alg.AES_192_CBC: 24, Alg.AES_256_CBC: 32}
CIPHER_BLOCK_BYTES = 16          # AES block = CBC iv length
MAC_DIGEST_BYTES = {Alg.HMAC_SHA1: 20, Alg.HMAC_SHA256: 32}
MAC_MAX_KEY_BYTES = 512          # QEMU 7.2's auth_key[512]
SYM_OPS = frozenset({Op.CIPHER_ENCRYPT, Op.CIPHER_DECRYPT, Op.MAC, Op.CHAIN_SEAL, Op.CHAIN_OPEN})

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


#: Output bytes each op writes at most (the data contract above): drivers and
#: frontends size ``dst`` with it, the host checks ``dst`` against it.
#: ECDH public keys on the wire (X25519 raw, P-256/384 SEC1 uncompressed) and secrets.
#: Hybrids: "own public key" is the server share (ML-KEM-768 ciphertext 1088 B
#: and the ECDH key), the secret both 32-byte secrets.
ECDH_PUBLIC_BYTES = {Alg.X25519: 32, Alg.SECP256R1: 65, Alg.SECP384R1: 97,
                     Alg.X25519MLKEM768: 1088 + 32, Alg.SECP256R1MLKEM768: 65 + 1088}
ECDH_SECRET_BYTES = {Alg.X25519: 32, Alg.SECP256R1: 32, Alg.SECP384R1: 48,
                     Alg.X25519MLKEM768: 64, Alg.SECP256R1MLKEM768: 64}
#: The peer share ``src`` holds (keyless form): the classical groups' public
#: keys, the hybrids' client shares (encapsulation key 1184 B and ECDH key).
KX_PEER_BYTES = {**{a: ECDH_PUBLIC_BYTES[a] for a in ECDH_ALGS - HYBRID_KX_ALGS},
                 Alg.X25519MLKEM768: 1184 + 32, Alg.SECP256R1MLKEM768: 65 + 1184}
ECDH_DST_BYTES = {a: ECDH_PUBLIC_BYTES[a] + ECDH_SECRET_BYTES[a] for a in ECDH_PUBLIC_BYTES}


def ecdh_secret_only(alg: Alg, dst_len: int) -> bool:
    """An ECDH request with ``dst_len`` bytes of dst asks for the shared
    secret only (the derive-only keyed form above)."""
    return dst_len < ECDH_DST_BYTES[alg]


SIGN_DST_BYTES = {Alg.ED25519: 64, Alg.ECDSA_SECP256R1_SHA256: 72,
                  Alg.ECDSA_SECP384R1_SHA384: 104}
MAX_SIGNATURE_BYTES = 1024   # RSA up to 8192 bits


def max_dst_bytes(op: Op, alg: Alg, src_len: int) -> int:
    """Upper bound of the ``dst`` bytes ``(op, alg)`` writes for ``src_len`` input
    (the one table: drivers and frontends size ``dst`` with it)."""
    if op is Op.AEAD_SEAL:
        return src_len + AEAD_TAG_BYTES
    if op is Op.AEAD_OPEN:
        return max(0, src_len - AEAD_TAG_BYTES)
    if op is Op.CIPHER_ENCRYPT or op is Op.CIPHER_DECRYPT:
        return src_len
    if op is Op.MAC:
        return MAC_DIGEST_BYTES[alg]
    if op is Op.CHAIN_SEAL:
        return src_len + MAC_DIGEST_BYTES[CHAIN_PARTS[alg][1]]
    if op is Op.CHAIN_OPEN:
        return max(0, src_len - MAC_DIGEST_BYTES[CHAIN_PARTS[alg][1]])
    if op is Op.ECDH:
        return ECDH_DST_BYTES[alg]
    return SIGN_DST_BYTES.get(alg, MAX_SIGNATURE_BYTES)

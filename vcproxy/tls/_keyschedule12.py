"""The TLS 1.2 key schedule (RFC 5246 §5, §6.3, §7.4.9) with the extended
master secret (RFC 7627), and the TLS 1.2 cipher suites we serve.

Stages, each a function of the one before::

    pre_master_secret (the ECDHE shared secret, RFC 8422 §5.10)
        ──▶ master_secret = PRF(pms, "extended master secret", session_hash)[0..47]
            (RFC 7627 §4; the RFC 5246 form with the randoms only if the
             config allows clients without EMS)
        ──▶ key_block = PRF(master, "key expansion", server_random + client_random)
            cut into client/server write key and IV (no MAC keys: AEAD only)
        ──▶ verify_data = PRF(master, "client finished" | "server finished",
                              Hash(handshake_messages))[0..11]

The PRF is P_<hash> over the suite's PRF hash (SHA-256, or SHA-384 for the
``_SHA384`` suites), on the same hashlib HMAC as the TLS 1.3 schedule. It
stays local like HKDF: cheap, and every step depends on the one before.
"""
from __future__ import annotations

import dataclasses
import hmac

from ._errors import DecryptError
from ._keyschedule import _HASHES, _HmacKey

MASTER_SECRET_LEN = 48
VERIFY_DATA_LEN = 12


@dataclasses.dataclass(frozen=True, slots=True)
class CipherSuite12:
    """A TLS 1.2 ECDHE + AEAD suite (RFC 5289, RFC 7905)."""

    id: int
    name: str            # IANA name
    auth: str            # "ecdsa" | "rsa": the certificate key it needs
    aead_alg: str        # provider AEAD name
    hash_name: str       # PRF and transcript hash
    key_len: int
    #: fixed_iv_length: 4 for GCM (salt; RFC 5288 §3), 12 for ChaCha20 (RFC 7905 §2)
    iv_len: int
    #: record_iv_length: 8 for GCM (the explicit nonce), 0 for ChaCha20
    explicit_nonce_len: int

    def new_hash(self):
        return _HASHES[self.hash_name][0]()


SUITES12 = {
    s.name: s for s in (
        CipherSuite12(0xC02B, "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", "ecdsa", "aes-128-gcm",
                      "sha256", 16, 4, 8),
        CipherSuite12(0xC02C, "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384", "ecdsa", "aes-256-gcm",
                      "sha384", 32, 4, 8),
        CipherSuite12(0xCCA9, "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256", "ecdsa",
                      "chacha20-poly1305", "sha256", 32, 12, 0),
        CipherSuite12(0xC02F, "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", "rsa", "aes-128-gcm",
                      "sha256", 16, 4, 8),
        CipherSuite12(0xC030, "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384", "rsa", "aes-256-gcm",
                      "sha384", 32, 4, 8),
        CipherSuite12(0xCCA8, "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256", "rsa",
                      "chacha20-poly1305", "sha256", 32, 12, 0),
    )
}
SUITES12_BY_ID = {s.id: s for s in SUITES12.values()}


def prf(hash_name: str, secret: bytes, label: bytes, seed: bytes, length: int) -> bytes:
    """PRF(secret, label, seed) = P_<hash>(secret, label + seed)[0..length-1] (RFC 5246 §5).

    A(0) = label + seed, A(i) = HMAC(secret, A(i-1));
    output = HMAC(secret, A(1) + label + seed) + HMAC(secret, A(2) + label + seed) + ...
    """
    mac = _HmacKey(secret, hash_name)
    seed = label + seed
    out = []
    n = 0
    a = seed
    while n < length:
        a = mac.digest(a)
        block = mac.digest(a + seed)
        out.append(block)
        n += len(block)
    return b"".join(out)[:length]


def master_secret(suite: CipherSuite12, pre_master_secret: bytes, *, session_hash: bytes | None,
                  client_random: bytes, server_random: bytes) -> bytes:
    """The master secret: extended (RFC 7627 §4) when ``session_hash`` is given."""
    if session_hash is not None:
        return prf(suite.hash_name, pre_master_secret, b"extended master secret", session_hash,
                   MASTER_SECRET_LEN)
    return prf(suite.hash_name, pre_master_secret, b"master secret",
               client_random + server_random, MASTER_SECRET_LEN)


@dataclasses.dataclass(frozen=True, slots=True)
class KeyBlock:
    client_key: bytes = dataclasses.field(repr=False)
    server_key: bytes = dataclasses.field(repr=False)
    client_iv: bytes = dataclasses.field(repr=False)
    server_iv: bytes = dataclasses.field(repr=False)


def key_block(suite: CipherSuite12, master: bytes, client_random: bytes,
              server_random: bytes) -> KeyBlock:
    """RFC 5246 §6.3: key_block = PRF(master, "key expansion", server_random + client_random),
    partitioned client/server MAC keys (none for AEAD), write keys, write IVs."""
    k, i = suite.key_len, suite.iv_len
    block = prf(suite.hash_name, master, b"key expansion", server_random + client_random,
                2 * k + 2 * i)
    return KeyBlock(block[:k], block[k:2 * k], block[2 * k:2 * k + i], block[2 * k + i:])


def verify_data(suite: CipherSuite12, master: bytes, sender: str, handshake_hash: bytes) -> bytes:
    """RFC 5246 §7.4.9: PRF(master, finished_label, Hash(handshake_messages))[0..11]."""
    label = b"client finished" if sender == "client" else b"server finished"
    return prf(suite.hash_name, master, label, handshake_hash, VERIFY_DATA_LEN)


def check_client_finished(suite: CipherSuite12, master: bytes, handshake_hash: bytes,
                          received: bytes) -> None:
    expected = verify_data(suite, master, "client", handshake_hash)
    if not hmac.compare_digest(expected, received):
        raise DecryptError("client Finished does not verify (TLS 1.2)")

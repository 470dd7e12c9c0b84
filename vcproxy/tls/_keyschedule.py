"""The TLS 1.3 key schedule (RFC 8446 §7) as a chain of stage types.

Each stage exposes only what is valid at that point, so the handshake cannot,
say, derive application secrets before the (EC)DHE input is mixed in::

    EarlySecret(suite, psk)          binder / Finished keys for PSK binders
        .into_handshake(dhe) ──▶ HandshakeSecret
                                     .traffic_secrets(H(CH..SH))
                                     .into_master() ──▶ MasterSecret
                                                         .traffic_secrets(H(CH..server Fin))
                                                         .resumption_master_secret(H(CH..client Fin))

HKDF runs on an RFC 2104 HMAC over hashlib's constructors: faster here than
``hmac.digest`` by name (an OpenSSL 3 digest fetch per call) or
``cryptography``'s binding (2–3 µs, ``notes/tls-costs.md``). It stays local on
purpose: it is cheap, and every step depends on the one before.
"""
from __future__ import annotations

import dataclasses
import hashlib
import hmac

from ._errors import DecryptError


@dataclasses.dataclass(frozen=True, slots=True)
class CipherSuite:
    id: int
    name: str          # IANA name
    aead_alg: str      # provider AEAD name
    hash_name: str     # hashlib name
    key_len: int

    @property
    def hash_len(self) -> int:
        return 48 if self.hash_name == "sha384" else 32

    def new_hash(self):
        return hashlib.new(self.hash_name)

    def empty_hash(self) -> bytes:
        return _EMPTY[self.hash_name]


_EMPTY = {"sha256": hashlib.sha256().digest(), "sha384": hashlib.sha384().digest()}

SUITES = {
    s.name: s for s in (
        CipherSuite(0x1301, "TLS_AES_128_GCM_SHA256", "aes-128-gcm", "sha256", 16),
        CipherSuite(0x1302, "TLS_AES_256_GCM_SHA384", "aes-256-gcm", "sha384", 32),
        CipherSuite(0x1303, "TLS_CHACHA20_POLY1305_SHA256", "chacha20-poly1305", "sha256", 32),
    )
}
SUITES_BY_ID = {s.id: s for s in SUITES.values()}
IV_LEN = 12


_HASHES = {"sha256": (hashlib.sha256, 64), "sha384": (hashlib.sha384, 128)}
_IPAD = bytes(x ^ 0x36 for x in range(256))
_OPAD = bytes(x ^ 0x5C for x in range(256))


def _hmac(key: bytes, msg: bytes, hash_name: str) -> bytes:
    """HMAC (RFC 2104) over hashlib's named constructors.

    Measured here: ~1.5x faster than ``hmac.digest(..., "sha256")``, which
    looks the digest up by name in OpenSSL 3 on every call.
    """
    ctor, block = _HASHES[hash_name]
    if len(key) > block:
        key = ctor(key).digest()
    key = key.ljust(block, b"\x00")
    return ctor(key.translate(_OPAD) + ctor(key.translate(_IPAD) + msg).digest()).digest()


_HASH_LEN = {"sha256": 32, "sha384": 48}
_LABEL_PREFIX: dict[tuple[int, bytes], bytes] = {}


def hkdf_extract(hash_name: str, salt: bytes, ikm: bytes) -> bytes:
    return _hmac(salt, ikm, hash_name)


def hkdf_expand_label(hash_name: str, secret: bytes, label: bytes, context: bytes,
                      length: int) -> bytes:
    """HKDF-Expand-Label (RFC 8446 §7.1): info = HkdfLabel{length, "tls13 "+label, context}."""
    prefix = _LABEL_PREFIX.get((length, label))
    if prefix is None:
        full = b"tls13 " + label
        prefix = _LABEL_PREFIX[length, label] = length.to_bytes(2, "big") + bytes((len(full),)) + full
    info = prefix + bytes((len(context),)) + context
    if length <= _HASH_LEN[hash_name]:
        return _hmac(secret, info + b"\x01", hash_name)[:length]  # one block: T(1)
    out, block, i = b"", b"", 1
    while len(out) < length:
        block = _hmac(secret, block + info + bytes((i,)), hash_name)
        out += block
        i += 1
    return out[:length]


def derive_secret(suite: CipherSuite, secret: bytes, label: bytes, transcript_hash: bytes) -> bytes:
    return hkdf_expand_label(suite.hash_name, secret, label, transcript_hash, suite.hash_len)


def traffic_key_iv(suite: CipherSuite, secret: bytes) -> tuple[bytes, bytes]:
    """[sender]_write_key and _iv for a traffic secret (RFC 8446 §7.3)."""
    h = suite.hash_name
    return (hkdf_expand_label(h, secret, b"key", b"", suite.key_len),
            hkdf_expand_label(h, secret, b"iv", b"", IV_LEN))


def next_traffic_secret(suite: CipherSuite, secret: bytes) -> bytes:
    """application_traffic_secret_N+1 (RFC 8446 §7.2, KeyUpdate)."""
    return hkdf_expand_label(suite.hash_name, secret, b"traffic upd", b"", suite.hash_len)


def finished_verify_data(suite: CipherSuite, base_key: bytes, transcript_hash: bytes) -> bytes:
    """verify_data = HMAC(finished_key, Transcript-Hash) (RFC 8446 §4.4.4)."""
    finished_key = hkdf_expand_label(suite.hash_name, base_key, b"finished", b"", suite.hash_len)
    return _hmac(finished_key, transcript_hash, suite.hash_name)


def check_finished(suite: CipherSuite, base_key: bytes, transcript_hash: bytes,
                   received: bytes, what: str) -> None:
    expected = finished_verify_data(suite, base_key, transcript_hash)
    if not hmac.compare_digest(expected, received):
        raise DecryptError(f"{what} does not verify")


def resumption_psk(suite: CipherSuite, resumption_master_secret: bytes, nonce: bytes) -> bytes:
    """The PSK a ticket stands for (RFC 8446 §4.6.1)."""
    return hkdf_expand_label(suite.hash_name, resumption_master_secret, b"resumption", nonce,
                             suite.hash_len)


_NO_PSK_EARLY: dict[str, bytes] = {}
_DERIVED: dict[tuple[str, bytes], bytes] = {}


class EarlySecret:
    """Early Secret = HKDF-Extract(0, PSK or zeros)."""

    __slots__ = ("suite", "secret")

    def __init__(self, suite: CipherSuite, psk: bytes | None = None):
        self.suite = suite
        zeros = bytes(suite.hash_len)
        if psk is None:  # a constant per suite: computed once
            secret = _NO_PSK_EARLY.get(suite.hash_name)
            if secret is None:
                secret = _NO_PSK_EARLY[suite.hash_name] = hkdf_extract(suite.hash_name, zeros, zeros)
            self.secret = secret
        else:
            self.secret = hkdf_extract(suite.hash_name, zeros, psk)

    def binder(self, truncated_hello_hash: bytes) -> bytes:
        """The binder for a resumption PSK ("res binder", RFC 8446 §4.2.11.2)."""
        binder_key = derive_secret(self.suite, self.secret, b"res binder", self.suite.empty_hash())
        return finished_verify_data(self.suite, binder_key, truncated_hello_hash)

    def into_handshake(self, dhe_shared_secret: bytes) -> HandshakeSecret:
        s = self.suite
        key = (s.hash_name, self.secret)
        derived = _DERIVED.get(key)
        if derived is None:
            derived = derive_secret(s, self.secret, b"derived", s.empty_hash())
            if self.secret is _NO_PSK_EARLY.get(s.hash_name):
                _DERIVED[key] = derived  # only the constant no-PSK value is cached
        return HandshakeSecret(s, hkdf_extract(s.hash_name, derived, dhe_shared_secret))


class HandshakeSecret:
    __slots__ = ("suite", "secret")

    def __init__(self, suite: CipherSuite, secret: bytes):
        self.suite = suite
        self.secret = secret

    def traffic_secrets(self, hello_hash: bytes) -> tuple[bytes, bytes]:
        """(client_handshake_traffic_secret, server_handshake_traffic_secret)."""
        s = self.suite
        return (derive_secret(s, self.secret, b"c hs traffic", hello_hash),
                derive_secret(s, self.secret, b"s hs traffic", hello_hash))

    def into_master(self) -> MasterSecret:
        s = self.suite
        derived = derive_secret(s, self.secret, b"derived", s.empty_hash())
        return MasterSecret(s, hkdf_extract(s.hash_name, derived, bytes(s.hash_len)))


class MasterSecret:
    __slots__ = ("suite", "secret")

    def __init__(self, suite: CipherSuite, secret: bytes):
        self.suite = suite
        self.secret = secret

    def traffic_secrets(self, server_finished_hash: bytes) -> tuple[bytes, bytes]:
        """(client_application_traffic_secret_0, server_application_traffic_secret_0)."""
        s = self.suite
        return (derive_secret(s, self.secret, b"c ap traffic", server_finished_hash),
                derive_secret(s, self.secret, b"s ap traffic", server_finished_hash))

    def exporter_master_secret(self, server_finished_hash: bytes) -> bytes:
        return derive_secret(self.suite, self.secret, b"exp master", server_finished_hash)

    def resumption_master_secret(self, client_finished_hash: bytes) -> bytes:
        return derive_secret(self.suite, self.secret, b"res master", client_finished_hash)

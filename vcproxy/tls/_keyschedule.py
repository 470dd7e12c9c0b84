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
    #: (a field, not a property: the key schedule reads it a dozen times a handshake)
    hash_len: int = dataclasses.field(init=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "hash_len", 48 if self.hash_name == "sha384" else 32)

    def new_hash(self):
        # The constructor, not hashlib.new(name): no OpenSSL lookup by name.
        return _HASHES[self.hash_name][0]()

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


class _HmacKey:
    """HMAC under one key with the padded-key blocks hashed once.

    A secret that keys two or three expansions (a traffic secret: key and IV;
    the handshake and master secrets: two traffic secrets and "derived" or
    "res master") then pays two hash-state copies per MAC instead of hashing
    two key blocks again.
    """

    __slots__ = ("_inner", "_outer")

    def __init__(self, key: bytes, hash_name: str):
        ctor, block = _HASHES[hash_name]
        if len(key) > block:
            key = ctor(key).digest()
        key = key.ljust(block, b"\x00")
        self._inner = ctor(key.translate(_IPAD))
        self._outer = ctor(key.translate(_OPAD))

    def digest(self, msg: bytes) -> bytes:
        inner = self._inner.copy()
        inner.update(msg)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()


_HASH_LEN = {"sha256": 32, "sha384": 48}
_LABEL_PREFIX: dict[tuple[int, bytes], bytes] = {}
#: Whole HkdfLabel || 0x01 for labels with an empty context ("key", "iv",
#: "finished", "traffic upd"): the info block is a constant per (length, label).
_EMPTY_CONTEXT_INFO: dict[tuple[int, bytes], bytes] = {}


def hkdf_extract(hash_name: str, salt: bytes, ikm: bytes) -> bytes:
    return _hmac(salt, ikm, hash_name)


def _label_prefix(label: bytes, length: int) -> bytes:
    prefix = _LABEL_PREFIX.get((length, label))
    if prefix is None:
        full = b"tls13 " + label
        prefix = _LABEL_PREFIX[length, label] = length.to_bytes(2, "big") + bytes((len(full),)) + full
    return prefix


def _expand_label(mac: _HmacKey, hash_len: int, label: bytes, context: bytes, length: int) -> bytes:
    """HKDF-Expand-Label through a prepared HMAC key (one output block or more)."""
    if not context and length <= hash_len:
        info1 = _EMPTY_CONTEXT_INFO.get((length, label))
        if info1 is None:
            info1 = _EMPTY_CONTEXT_INFO[length, label] = _label_prefix(label, length) + b"\x00\x01"
        return mac.digest(info1)[:length]
    info = _label_prefix(label, length) + bytes((len(context),)) + context
    if length <= hash_len:
        return mac.digest(info + b"\x01")[:length]  # one block: T(1)
    out, block, i = b"", b"", 1
    while len(out) < length:
        block = mac.digest(block + info + bytes((i,)))
        out += block
        i += 1
    return out[:length]


def hkdf_expand_label(hash_name: str, secret: bytes, label: bytes, context: bytes,
                      length: int) -> bytes:
    """HKDF-Expand-Label (RFC 8446 §7.1): info = HkdfLabel{length, "tls13 "+label, context}."""
    hash_len = _HASH_LEN[hash_name]
    if length <= hash_len:
        # One output block: a one-shot HMAC (no key state worth keeping).
        if context:
            info1 = _label_prefix(label, length) + bytes((len(context),)) + context + b"\x01"
        else:
            info1 = _EMPTY_CONTEXT_INFO.get((length, label))
            if info1 is None:
                info1 = _EMPTY_CONTEXT_INFO[length, label] = _label_prefix(label, length) + b"\x00\x01"
        return _hmac(secret, info1, hash_name)[:length]
    return _expand_label(_HmacKey(secret, hash_name), hash_len, label, context, length)


def derive_secret(suite: CipherSuite, secret: bytes, label: bytes, transcript_hash: bytes) -> bytes:
    return hkdf_expand_label(suite.hash_name, secret, label, transcript_hash, suite.hash_len)


def traffic_key_iv(suite: CipherSuite, secret: bytes) -> tuple[bytes, bytes]:
    """[sender]_write_key and _iv for a traffic secret (RFC 8446 §7.3)."""
    mac = _HmacKey(secret, suite.hash_name)  # one key, two expansions
    # Both outputs fit one block and have an empty context: T(1) over a
    # constant HkdfLabel each (``_expand_label``'s first case, inlined).
    infos = _KEY_IV_INFO.get(suite.key_len)
    if infos is None:
        infos = _KEY_IV_INFO[suite.key_len] = (
            _label_prefix(b"key", suite.key_len) + b"\x00\x01", _label_prefix(b"iv", IV_LEN) + b"\x00\x01")
    return mac.digest(infos[0])[:suite.key_len], mac.digest(infos[1])[:IV_LEN]


#: key_len -> (HkdfLabel || 0x01 for "key", the same for "iv")
_KEY_IV_INFO: dict[int, tuple[bytes, bytes]] = {}


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
    __slots__ = ("suite", "secret", "_mac")

    def __init__(self, suite: CipherSuite, secret: bytes):
        self.suite = suite
        self.secret = secret
        # Keys three expansions (both traffic secrets and "derived").
        self._mac = _HmacKey(secret, suite.hash_name)

    def traffic_secrets(self, hello_hash: bytes) -> tuple[bytes, bytes]:
        """(client_handshake_traffic_secret, server_handshake_traffic_secret)."""
        n = self.suite.hash_len
        return (_expand_label(self._mac, n, b"c hs traffic", hello_hash, n),
                _expand_label(self._mac, n, b"s hs traffic", hello_hash, n))

    def into_master(self) -> MasterSecret:
        s = self.suite
        n = s.hash_len
        derived = _expand_label(self._mac, n, b"derived", s.empty_hash(), n)
        return MasterSecret(s, hkdf_extract(s.hash_name, derived, bytes(n)))


class MasterSecret:
    __slots__ = ("suite", "secret", "_mac")

    def __init__(self, suite: CipherSuite, secret: bytes):
        self.suite = suite
        self.secret = secret
        # Keys three expansions (both application secrets and "res master").
        self._mac = _HmacKey(secret, suite.hash_name)

    def _derive(self, label: bytes, transcript_hash: bytes) -> bytes:
        n = self.suite.hash_len
        return _expand_label(self._mac, n, label, transcript_hash, n)

    def traffic_secrets(self, server_finished_hash: bytes) -> tuple[bytes, bytes]:
        """(client_application_traffic_secret_0, server_application_traffic_secret_0)."""
        return (self._derive(b"c ap traffic", server_finished_hash),
                self._derive(b"s ap traffic", server_finished_hash))

    def exporter_master_secret(self, server_finished_hash: bytes) -> bytes:
        return self._derive(b"exp master", server_finished_hash)

    def resumption_master_secret(self, client_finished_hash: bytes) -> bytes:
        return self._derive(b"res master", client_finished_hash)

"""The crypto provider seam: every costly TLS operation goes through here.

``vcproxy.tls`` does no public-key or record crypto of its own. The sans-IO
handshake (``_handshake``) *asks* for a key exchange or a signature by
emitting a command; ``TLSStream`` awaits the provider and feeds the result
back. Record protection runs through ``AeadSession`` objects the provider
hands out, one per traffic key. What stays local (cheap, latency-critical and
not worth a round trip): transcript hashing, HKDF, Finished/binder HMACs and
ticket sealing.

The seam, and why each shape is what it is:

``CryptoProvider.key_exchange(group, peer_public) -> (own_public, shared)``
    Keygen and derive in ONE operation, exactly as vcrypto's ``Op.ECDH``: a
    remote provider then never holds per-connection ephemeral state. Groups:
    ``"x25519"`` (raw 32-byte keys), ``"secp256r1"`` / ``"secp384r1"``
    (SEC1 uncompressed points), and the TLS 1.3 hybrids of
    draft-ietf-tls-ecdhe-mlkem, ``"X25519MLKEM768"`` / ``"SecP256r1MLKEM768"``
    (``HYBRIDS``). A peer key that is not a valid point raises
    ``IllegalParameter`` (the peer's fault); a provider failure raises
    ``CryptoProviderError``.

    A hybrid is a KEM, and a KEM fits the same shape: ``peer_public`` is the
    client's share (an ML-KEM-768 encapsulation key and an ECDH share, in the
    draft's order), ``own_public`` the server's (the ML-KEM ciphertext and our
    ECDH share, same order) and ``shared`` both secrets concatenated in that
    order again (64 bytes, fed to the key schedule as is). ``hybrid_split`` /
    ``hybrid_join`` are the one place the order is written down.

``CryptoProvider.key_exchange(group, peer_public, private_key=scalar)``
    The keyed form, for TLS 1.2, where our share leaves (in ServerKeyExchange)
    before the client's arrives: the handshake draws an ephemeral scalar
    (``ecdhe_scalar``, from ``random_bytes``) and asks twice, first against
    the group's base point (``BASE_POINTS``: ``own_public`` is then our share)
    and then against the client's share. The scalar lives in the handshake
    state, not in the provider (vcrypto: ``Op.ECDH`` with src = scalar || peer),
    so a remote provider still keeps no per-connection state. Against the
    client's share ``own_public`` is not needed (the handshake sent it): a
    provider may return it empty (vcrypto does: its host then skips
    recomputing it).

``CryptoProvider.key_share(group) -> KeyShare | None``
    Sync: a fresh ephemeral key pair (``KeyShare``: scalar and our public
    share) for an ECDH group, or None. A TLS 1.3 full handshake that gets one
    knows its ServerHello at once, and the CertificateVerify signature covers
    the transcript through Certificate, which holds our *public* share but
    not the shared secret: so the derive (the keyed form below, scalar ||
    client share) and the signature leave together, one round trip instead
    of two (``derive_and_sign`` below).
    TLS 1.2 takes its ServerKeyExchange share the same way (no base-point
    round trip). A share is handed out once and never again. None (the
    default; hybrids always: ML-KEM encapsulation needs the client's key)
    means the handshake uses the one-op ``key_exchange`` below. The inline
    provider computes one at once; vcrypto takes it from its per-worker
    ``KeySharePool`` (``_keyshares``), refilled by offloaded keygens.

``CryptoProvider.derive_and_sign(group, peer_public, scalar, key, scheme, message) -> (shared, signature)``
    The keyed-form derive under a ``KeyShare``'s scalar and a signature, for
    a TLS 1.3 full handshake with a pre-generated share: a remote provider
    submits both before awaiting either (vcrypto: one device batch, from one
    task) and asks for the shared secret only (the handshake holds our public
    share already: the device skips recomputing it). The default runs
    ``key_exchange`` then ``sign`` (in-process providers finish each without
    waiting). Errors as those two (the derive's first: a bad client share is
    the peer's fault).

``CryptoProvider.load_signing_key(pem, key_ref=None) -> SigningKey``
    Sync, done once per certificate (``CertificateEntry`` caches it per
    provider). The ``SigningKey`` is a *handle*: a keyless provider may keep
    only ``key_ref`` and leave the key material elsewhere.

``CryptoProvider.sign(key, scheme, message) -> signature``
    ``scheme`` is the TLS SignatureScheme name (``vcrypto.ops.Alg`` values,
    e.g. ``"ecdsa_secp256r1_sha256"``, ``"rsa_pss_rsae_sha256"``,
    ``"ed25519"``); ``message`` is the full to-be-signed content (RFC 8446
    §4.4.3: 64 spaces, context string, 0x00, transcript hash), never a
    digest, so Ed25519 and remote signers work unchanged. ECDSA signatures
    are DER; RSA-PSS uses salt length = hash length (RFC 8446 §4.2.3).

``CryptoProvider.aead(suite_alg, key) -> AeadSession``
    ``suite_alg``: ``"aes-128-gcm"``, ``"aes-256-gcm"``,
    ``"chacha20-poly1305"``. One ``AeadSession`` object per traffic key
    (for vcrypto a handle whose key travels in each request, stateless; a
    host session only when the engine-backend runs ``--aead-sessions``). ``seal_many`` / ``open_many`` take up to ``ServerConfig.pipeline_depth``
    (≤ 16) ``(nonce, aad, data)`` items and complete them together: one await
    per batch (vcrypto's "opdone" pipeline mode). Results come back in order.
    A failed tag anywhere in ``open_many`` raises ``BadRecordMac`` for the
    batch. The sync ``seal`` / ``open`` are the in-process small-record path
    (records under ``small_record_threshold_bytes``): a remote provider
    implements them with local software crypto. ``aclose`` releases the
    session (key update, connection end); ``needs_aclose`` False (the
    default when ``aclose`` is not overridden) lets the stream skip it.

``CryptoProvider.random_bytes(n)``
    Server random, HRR cookies, ticket nonces. Default: ``os.urandom``.

Providers must stay hashable and weak-referenceable (the default for a
class): ``CertificateEntry`` caches each provider's ``SigningKey`` in a
``WeakKeyDictionary``.
"""
from __future__ import annotations

import abc
import collections
import dataclasses
import os
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, mlkem, padding, rsa, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ._errors import BadRecordMac, CryptoProviderError, IllegalParameter

#: TLS 1.3 signature schemes a key type can produce, in our preference order.
SCHEMES_BY_KEY_TYPE: dict[str, tuple[str, ...]] = {
    "ecdsa-p256": ("ecdsa_secp256r1_sha256",),
    "ecdsa-p384": ("ecdsa_secp384r1_sha384",),
    "ed25519": ("ed25519",),
    "rsa": ("rsa_pss_rsae_sha256", "rsa_pss_rsae_sha384", "rsa_pss_rsae_sha512",
            "rsa_pkcs1_sha256", "rsa_pkcs1_sha384", "rsa_pkcs1_sha512"),  # (PKCS#1: TLS 1.2 only)
}

GROUPS = ("X25519MLKEM768", "SecP256r1MLKEM768", "x25519", "secp256r1", "secp384r1")

#: draft-ietf-tls-ecdhe-mlkem: hybrid -> (its ECDH group, whether the ECDH
#: part comes first). X25519MLKEM768 puts ML-KEM first (client: encapsulation
#: key || X25519 share; server: ciphertext || X25519 share; secret: ML-KEM
#: secret || X25519 secret); SecP256r1MLKEM768 puts the P-256 part first in
#: all three. OpenSSL 3.5, BoringSSL and Go order them the same way.
HYBRIDS = {"X25519MLKEM768": ("x25519", False), "SecP256r1MLKEM768": ("secp256r1", True)}
#: FIPS 203 ML-KEM-768 sizes: encapsulation key, ciphertext, shared secret.
MLKEM768_EK_BYTES, MLKEM768_CT_BYTES, MLKEM768_SS_BYTES = 1184, 1088, 32
#: ECDH share bytes of each hybrid's classical part (X25519 raw, P-256 uncompressed).
_ECDH_SHARE_BYTES = {"x25519": 32, "secp256r1": 65}
#: The draft's exact share lengths (client, server): 1216/1120 and 1249/1153.
HYBRID_SHARE_BYTES = {
    name: (MLKEM768_EK_BYTES + _ECDH_SHARE_BYTES[ecdh], MLKEM768_CT_BYTES + _ECDH_SHARE_BYTES[ecdh])
    for name, (ecdh, _) in HYBRIDS.items()}


def hybrid_split(group: str, client_share: bytes) -> tuple[bytes, bytes]:
    """A hybrid client share as (ML-KEM encapsulation key, ECDH share).

    draft-ietf-tls-ecdhe-mlkem: a share of any other length aborts the
    handshake with illegal_parameter.
    """
    ecdh, ecdh_first = HYBRIDS[group]
    want = HYBRID_SHARE_BYTES[group][0]
    if len(client_share) != want:
        raise IllegalParameter(f"{group} key share of {len(client_share)} bytes, expected {want}")
    n = _ECDH_SHARE_BYTES[ecdh]
    if ecdh_first:
        return client_share[n:], client_share[:n]
    return client_share[:MLKEM768_EK_BYTES], client_share[MLKEM768_EK_BYTES:]


def hybrid_join(group: str, mlkem_part: bytes, ecdh_part: bytes) -> bytes:
    """The ML-KEM and ECDH halves (of the server share or of the shared
    secret) concatenated in ``group``'s order."""
    return ecdh_part + mlkem_part if HYBRIDS[group][1] else mlkem_part + ecdh_part


def mlkem768_encapsulate(encapsulation_key: bytes) -> tuple[bytes, bytes]:
    """FIPS 203 ML-KEM-768 Encaps: (ciphertext, shared secret).

    A key failing FIPS 203's input check (§7.2: a coefficient not reduced mod
    q) raises ``IllegalParameter`` (draft-ietf-tls-ecdhe-mlkem §4: the server
    MUST check it and abort with illegal_parameter).
    """
    try:
        ek = mlkem.MLKEM768PublicKey.from_public_bytes(encapsulation_key)
    except ValueError as exc:
        raise IllegalParameter(f"ML-KEM-768 encapsulation key rejected: {exc}") from exc
    shared, ciphertext = ek.encapsulate()
    return ciphertext, shared
AEAD_ALGS = ("aes-128-gcm", "aes-256-gcm", "chacha20-poly1305")

#: Private scalar bytes per group (X25519: RFC 7748 §5; P-256/384: the order's size).
SCALAR_BYTES = {"x25519": 32, "secp256r1": 32, "secp384r1": 48}
_ORDERS = {
    "secp256r1": 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551,
    "secp384r1": int("FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF"
                     "581A0DB248B0A77AECEC196ACCC52973", 16),
}


def _base_point(group: str) -> bytes:
    if group == "x25519":
        return b"\x09" + bytes(31)  # u = 9 (RFC 7748 §4.1)
    curve = {"secp256r1": ec.SECP256R1, "secp384r1": ec.SECP384R1}[group]()
    return ec.derive_private_key(1, curve).public_key().public_bytes(
        Encoding.X962, PublicFormat.UncompressedPoint)


#: Each group's generator in its wire encoding: ECDH against it under a
#: scalar yields that scalar's public key.
BASE_POINTS = {g: _base_point(g) for g in SCALAR_BYTES}


def ecdhe_scalar(group: str, random_bytes) -> bytes:
    """A uniformly random ephemeral private scalar for ``group``.

    X25519: any 32 bytes (clamped by the function itself). P-256/P-384: drawn
    until it lies in [1, n-1] (rejection, so no modular bias; a retry is
    needed with probability ~2^-32).
    """
    n = SCALAR_BYTES[group]
    order = _ORDERS.get(group)
    for _ in range(64):  # (a sound random source needs one draw, two at worst)
        scalar = random_bytes(n)
        if order is None or 0 < int.from_bytes(scalar, "big") < order:
            return scalar
    raise CryptoProviderError(f"random_bytes gave no {group} scalar in [1, n-1] in 64 draws")


@dataclasses.dataclass(frozen=True, slots=True)
class KeyShare:
    """One ephemeral ECDHE key pair for ``group``, used by exactly one
    handshake: ``public`` in its wire encoding (X25519 raw, SEC1
    uncompressed point), ``scalar`` as ``ecdhe_scalar`` draws it (the keyed
    form's input)."""

    group: str
    public: bytes
    scalar: bytes = dataclasses.field(repr=False)


#: One AEAD work item: (12-byte nonce, additional data, plaintext or ciphertext||tag).
AeadItem = tuple[bytes, bytes, bytes]


def key_type_of(key: object) -> str:
    """Name the key type of a ``cryptography`` public or private key."""
    if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)):
        curve = key.curve.name
        if curve == "secp256r1":
            return "ecdsa-p256"
        if curve == "secp384r1":
            return "ecdsa-p384"
        raise ValueError(f"unsupported EC curve {curve} (secp256r1 or secp384r1)")
    if isinstance(key, (ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey)):
        return "ed25519"
    if isinstance(key, (rsa.RSAPrivateKey, rsa.RSAPublicKey)):
        if key.key_size < 2048:
            raise ValueError(f"RSA key of {key.key_size} bits: at least 2048 required")
        return "rsa"
    raise ValueError(f"unsupported key type {type(key).__name__}")


@dataclasses.dataclass(frozen=True, eq=False)
class SigningKey:
    """A handle on a private key, as a provider wants to hold it.

    ``key_type`` ("ecdsa-p256", "ecdsa-p384", "rsa", "ed25519") and
    ``schemes`` are public facts the handshake uses to choose a scheme.
    ``private_key_der`` (PKCS#8) is None in keyless mode; ``key_ref`` names
    the key for a provider that keeps it elsewhere; ``handle`` is the
    provider's own object (e.g. a loaded ``cryptography`` key).
    """

    key_type: str
    schemes: tuple[str, ...]
    key_ref: str | None = None
    private_key_der: bytes | None = dataclasses.field(default=None, repr=False)
    handle: object = dataclasses.field(default=None, repr=False)


class AeadSession(abc.ABC):
    """Record protection under one traffic key (see the module docstring)."""

    alg: str

    @abc.abstractmethod
    def seal(self, nonce: bytes, aad: bytes, plaintext: bytes) -> bytes:
        """In-process seal: ciphertext || 16-byte tag."""

    @abc.abstractmethod
    def open(self, nonce: bytes, aad: bytes, ciphertext: bytes) -> bytes:
        """In-process open; raises ``BadRecordMac`` on a tag mismatch."""

    @abc.abstractmethod
    async def seal_many(self, items: Sequence[AeadItem]) -> list[bytes]:
        """Seal a batch; results in the order of ``items``."""

    @abc.abstractmethod
    async def open_many(self, items: Sequence[AeadItem]) -> list[bytes]:
        """Open a batch; raises ``BadRecordMac`` if any tag fails."""

    async def aclose(self) -> None:
        """Release the session. Default: nothing to release."""

    @property
    def needs_aclose(self) -> bool:
        """Whether ``aclose`` has anything to release; when False the stream
        skips the call (and the bounded, shielded scope around it). Default:
        True exactly when a subclass overrides ``aclose``; wrappers delegate."""
        return type(self).aclose is not AeadSession.aclose


class CryptoProvider(abc.ABC):
    """Where TLS public-key and record crypto runs (see the module docstring)."""

    name: str = "abstract"

    @abc.abstractmethod
    async def key_exchange(self, group: str, peer_public: bytes, *,
                           private_key: bytes | None = None) -> tuple[bytes, bytes]:
        """Generate an ephemeral key for ``group`` (or use ``private_key``, a
        scalar from ``ecdhe_scalar``), derive with ``peer_public``.

        Returns ``(own_public_key_share, shared_secret)``.
        """

    def key_share(self, group: str) -> KeyShare | None:
        """A fresh ephemeral key pair for ``group``, used once, or None (the
        handshake then uses the one-op ``key_exchange``). Default: None."""
        return None

    async def derive_and_sign(self, group: str, peer_public: bytes, scalar: bytes, key: SigningKey,
                              scheme: str, message: bytes) -> tuple[bytes, bytes]:
        """``(shared_secret, signature)``: see the module docstring. Default:
        one op after the other."""
        _own, shared = await self.key_exchange(group, peer_public, private_key=scalar)
        return shared, await self.sign(key, scheme, message)

    @abc.abstractmethod
    def load_signing_key(self, private_key_pem: bytes, *, key_ref: str | None = None) -> SigningKey:
        """Turn a PEM private key (or, keyless, just a ``key_ref``) into a handle."""

    @abc.abstractmethod
    async def sign(self, key: SigningKey, scheme: str, message: bytes) -> bytes:
        """Sign the full ``message`` with ``scheme`` (a TLS SignatureScheme name)."""

    @abc.abstractmethod
    def aead(self, suite_alg: str, key: bytes) -> AeadSession:
        """Open a record-protection session for one traffic key."""

    def random_bytes(self, n: int) -> bytes:
        return os.urandom(n)


# --------------------------------------------------------------------------
# InlineProvider: `cryptography` in-process, the bare-metal baseline.
# --------------------------------------------------------------------------

def load_private_key_pem(private_key_pem: bytes):
    try:
        return serialization.load_pem_private_key(private_key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"cannot load private key: {exc}") from exc


class _InlineAead(AeadSession):
    __slots__ = ("alg", "_cipher")

    def __init__(self, alg: str, key: bytes):
        self.alg = alg
        if alg == "chacha20-poly1305":
            self._cipher = ChaCha20Poly1305(key)
        elif alg in ("aes-128-gcm", "aes-256-gcm"):
            want = 16 if alg == "aes-128-gcm" else 32
            if len(key) != want:
                raise ValueError(f"{alg} key must be {want} bytes, got {len(key)}")
            self._cipher = AESGCM(key)
        else:
            raise ValueError(f"unknown AEAD {alg!r} (one of {', '.join(AEAD_ALGS)})")

    def seal(self, nonce: bytes, aad: bytes, plaintext: bytes) -> bytes:
        return self._cipher.encrypt(nonce, plaintext, aad)

    def open(self, nonce: bytes, aad: bytes, ciphertext: bytes) -> bytes:
        try:
            return self._cipher.decrypt(nonce, ciphertext, aad)
        except InvalidTag:
            raise BadRecordMac("record failed AEAD authentication") from None

    async def seal_many(self, items: Sequence[AeadItem]) -> list[bytes]:
        enc = self._cipher.encrypt
        return [enc(n, p, a) for n, a, p in items]

    async def open_many(self, items: Sequence[AeadItem]) -> list[bytes]:
        return [self.open(n, a, c) for n, a, c in items]


#: Ephemeral keys loaded at TLS 1.2 keygen, taken back at the derive: loading a
#: scalar computes its public key again (72 µs for X25519 here, more than the
#: exchange itself). Bounded; an entry of a connection that never derives is
#: dropped oldest first.
_LOADED: collections.OrderedDict[bytes, object] = collections.OrderedDict()
_LOADED_MAX = 4096


def _load_scalar(private_key: bytes, load, keygen: bool):
    if not keygen:
        priv = _LOADED.pop(private_key, None)
        if priv is not None:
            return priv
    priv = load()
    if keygen:
        _LOADED[private_key] = priv
        if len(_LOADED) > _LOADED_MAX:
            _LOADED.popitem(last=False)
    return priv


def _inline_key_exchange(group: str, peer_public: bytes,
                         private_key: bytes | None = None) -> tuple[bytes, bytes]:
    if group in HYBRIDS:
        return _inline_hybrid(group, peer_public, private_key)
    if private_key is not None and len(private_key) != SCALAR_BYTES.get(group):
        raise CryptoProviderError(f"{group}: private scalar of {len(private_key)} bytes")
    if group == "x25519":
        if len(peer_public) != 32:
            raise IllegalParameter(f"x25519 key share of {len(peer_public)} bytes, expected 32")
        keygen = private_key is not None and peer_public == BASE_POINTS["x25519"]
        priv = (x25519.X25519PrivateKey.generate() if private_key is None else _load_scalar(
            private_key, lambda: x25519.X25519PrivateKey.from_private_bytes(private_key), keygen))
        if keygen:
            own = priv.public_key().public_bytes_raw()
            return own, own  # X25519(k, 9) is the public key itself: no second multiplication
        try:
            shared = priv.exchange(x25519.X25519PublicKey.from_public_bytes(peer_public))
        except ValueError as exc:  # all-zero shared secret (small-order point)
            raise IllegalParameter(f"x25519 key share rejected: {exc}") from exc
        return priv.public_key().public_bytes_raw(), shared
    curve = {"secp256r1": ec.SECP256R1, "secp384r1": ec.SECP384R1}.get(group)
    if curve is None:
        raise CryptoProviderError(f"unsupported group {group!r}")
    # RFC 8446 §4.2.8.2: only the uncompressed point form (0x04 || X || Y).
    size = 65 if group == "secp256r1" else 97
    if len(peer_public) != size or peer_public[0] != 4:
        raise IllegalParameter(f"{group} key share is not an uncompressed point")
    try:
        peer = ec.EllipticCurvePublicKey.from_encoded_point(curve(), peer_public)
    except ValueError as exc:
        raise IllegalParameter(f"{group} key share is not on the curve") from exc
    if private_key is None:
        priv = ec.generate_private_key(curve())
    else:
        keygen = peer_public == BASE_POINTS[group]
        try:
            priv = _load_scalar(private_key, lambda: ec.derive_private_key(
                int.from_bytes(private_key, "big"), curve()), keygen)
        except ValueError as exc:
            raise CryptoProviderError(f"{group}: private scalar out of range") from exc
        if keygen:  # our share only: k·G is the public key
            own = priv.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
            return own, own[1:1 + (size - 1) // 2]
    shared = priv.exchange(ec.ECDH(), peer)
    return priv.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint), shared


def _inline_hybrid(group: str, client_share: bytes,
                   private_key: bytes | None) -> tuple[bytes, bytes]:
    if private_key is not None:  # (the keyed form is TLS 1.2's; hybrids are TLS 1.3 only)
        raise CryptoProviderError(f"{group}: a hybrid has no keyed form")
    ek, ecdh_share = hybrid_split(group, client_share)
    ciphertext, kem_secret = mlkem768_encapsulate(ek)
    own, ecdh_secret = _inline_key_exchange(HYBRIDS[group][0], ecdh_share)
    return hybrid_join(group, ciphertext, own), hybrid_join(group, kem_secret, ecdh_secret)


def _sign_args(scheme: str) -> tuple:
    """The ``sign()`` arguments after the message for ``scheme``."""
    if scheme == "ed25519":
        return ()
    if scheme.startswith("ecdsa_"):
        h = {"ecdsa_secp256r1_sha256": hashes.SHA256, "ecdsa_secp384r1_sha384": hashes.SHA384}[scheme]
        return (ec.ECDSA(h()),)
    if scheme.startswith("rsa_pss_rsae_"):
        h = {"sha256": hashes.SHA256, "sha384": hashes.SHA384, "sha512": hashes.SHA512}[scheme[-6:]]
        return (padding.PSS(padding.MGF1(h()), h.digest_size), h())
    if scheme.startswith("rsa_pkcs1_"):
        h = {"sha256": hashes.SHA256, "sha384": hashes.SHA384, "sha512": hashes.SHA512}[scheme[-6:]]
        return (padding.PKCS1v15(), h())
    raise KeyError(scheme)


#: Padding/hash objects are immutable: built once per scheme, not per
#: signature (building them cost a few µs of every handshake).
_SIGN_ARGS: dict[str, tuple] = {}


def inline_sign(private_key, scheme: str, message: bytes) -> bytes:
    """Sign with a ``cryptography`` private key object (shared with vcrypto resources)."""
    args = _SIGN_ARGS.get(scheme)
    if args is None:
        try:
            args = _SIGN_ARGS[scheme] = _sign_args(scheme)
        except KeyError:
            raise ValueError(f"unknown signature scheme {scheme!r}") from None
    return private_key.sign(message, *args)


class InlineProvider(CryptoProvider):
    """Everything in-process with ``cryptography``: the baseline to compare against."""

    name = "inline"

    async def key_exchange(self, group: str, peer_public: bytes, *,
                           private_key: bytes | None = None) -> tuple[bytes, bytes]:
        return _inline_key_exchange(group, peer_public, private_key)

    def key_share(self, group: str) -> KeyShare | None:
        # Computed at once, in-process: a pool would spend the same CPU in the
        # same process. The keygen leaves the loaded key in ``_LOADED``, so the
        # derive under this scalar costs one multiplication, as the one-op
        # exchange does.
        if group not in SCALAR_BYTES:
            return None
        scalar = ecdhe_scalar(group, self.random_bytes)
        own, _ = _inline_key_exchange(group, BASE_POINTS[group], scalar)
        return KeyShare(group, own, scalar)

    def load_signing_key(self, private_key_pem: bytes, *, key_ref: str | None = None) -> SigningKey:
        key = load_private_key_pem(private_key_pem)
        key_type = key_type_of(key)
        der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        return SigningKey(key_type, SCHEMES_BY_KEY_TYPE[key_type], key_ref, der, key)

    async def sign(self, key: SigningKey, scheme: str, message: bytes) -> bytes:
        if scheme not in key.schemes:
            raise CryptoProviderError(f"key of type {key.key_type} cannot sign {scheme}")
        if key.handle is None:
            raise CryptoProviderError(f"inline provider has no key material for {key.key_ref!r}")
        return inline_sign(key.handle, scheme, message)

    def aead(self, suite_alg: str, key: bytes) -> AeadSession:
        return _InlineAead(suite_alg, key)

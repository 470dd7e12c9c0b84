"""Server configuration: certificates with SNI selection, algorithms, limits.

``ServerConfig`` is frozen and validated at construction: ``ServerConfigError``
(a ``ValueError``) lists every bad field with its problem. ``None`` for ``cipher_suites``, ``groups``
or ``signature_schemes`` means "all supported, in our preference order".

SNI selection (``ServerConfig.select_certificates``): entries whose names
match the client's server_name exactly come first, then wildcard matches
(``*.example.com`` matches exactly one extra leftmost label), in config
order; when nothing matches, the first entry is the default. The handshake
then takes the first of those whose key can sign with a scheme the client
offers, so an ECDSA and an RSA certificate for one name coexist.

Session tickets: ``TicketConfig.keys`` are 32-byte secrets shared by every
worker (the first seals new tickets, all open them: rotate by prepending).
With no keys, each process makes its own and rotates it every
``rotate_after_s``, keeping the previous one so tickets stay valid for one
more period.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import threading
import weakref
from collections.abc import Sequence

from ._codec import SCHEME_IDS
from ._provider import SCHEMES_BY_KEY_TYPE, CryptoProvider, SigningKey, key_type_of

SECONDS = 1.0

CIPHER_SUITES_TLS13 = ("TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384",
                       "TLS_CHACHA20_POLY1305_SHA256")
#: TLS 1.2: ECDHE key exchange and AEAD only (RFC 5289, RFC 7905), our preference order.
CIPHER_SUITES_TLS12 = (
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384", "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256", "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256")
CIPHER_SUITES = CIPHER_SUITES_TLS13 + CIPHER_SUITES_TLS12
#: Key exchange groups, our preference order: the post-quantum hybrids of
#: draft-ietf-tls-ecdhe-mlkem first (TLS 1.3 only), then classical ECDHE.
GROUPS_HYBRID = ("X25519MLKEM768", "SecP256r1MLKEM768")
GROUPS_ECDHE = ("x25519", "secp256r1", "secp384r1")
GROUPS = GROUPS_HYBRID + GROUPS_ECDHE
#: rsa_pkcs1_* sign TLS 1.2 ServerKeyExchange only: RFC 8446 §4.2.3 forbids
#: them in a TLS 1.3 CertificateVerify.
SIGNATURE_SCHEMES = ("ecdsa_secp256r1_sha256", "ecdsa_secp384r1_sha384", "ed25519",
                     "rsa_pss_rsae_sha256", "rsa_pss_rsae_sha384", "rsa_pss_rsae_sha512",
                     "rsa_pkcs1_sha256", "rsa_pkcs1_sha384", "rsa_pkcs1_sha512")
#: Protocol versions by config name; SSL 3.0, TLS 1.0 and 1.1 are not
#: negotiable at all (RFC 8996).
VERSIONS = ("1.2", "1.3")


def _pem_blocks(pem: bytes, kind: bytes) -> list[bytes]:
    begin, end = b"-----BEGIN " + kind + b"-----", b"-----END " + kind + b"-----"
    out, pos = [], 0
    while (start := pem.find(begin, pos)) >= 0:
        stop = pem.find(end, start)
        if stop < 0:
            break
        out.append(pem[start:stop + len(end)] + b"\n")
        pos = stop + len(end)
    return out


class CertificateLoadError(ValueError):
    """A certificate entry cannot be built; ``part`` names the file at fault:
    ``"cert"`` (the chain: unreadable, no PEM block, unsupported key type) or
    ``"key"`` (the private key: unreadable, not a key, not the leaf's)."""

    def __init__(self, part: str, message: str) -> None:
        super().__init__(message)
        self.part = part


class ServerConfigError(ValueError):
    """Every problem of one ``ServerConfig``, not only the first: ``problems``
    is a list of ``(field, message)``; ``str()`` joins them."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{f}: {m}" for f, m in problems))
        self.problems = list(problems)


@dataclasses.dataclass(frozen=True, eq=False)
class CertificateEntry:
    """One certificate chain (leaf first) with its private key and SNI names."""

    chain_der: tuple[bytes, ...]
    key_pem: bytes = dataclasses.field(repr=False)
    names: tuple[str, ...]
    key_type: str
    key_ref: str | None = None
    _signing_keys: weakref.WeakKeyDictionary = dataclasses.field(
        default_factory=weakref.WeakKeyDictionary, repr=False, compare=False)

    @property
    def schemes(self) -> tuple[str, ...]:
        return SCHEMES_BY_KEY_TYPE[self.key_type]

    @functools.cached_property
    def certificate_message(self) -> bytes:
        """The Certificate handshake message, built once, not per handshake."""
        from ._codec import certificate

        return certificate(self.chain_der)

    @functools.cached_property
    def certificate_message12(self) -> bytes:
        """The TLS 1.2 Certificate message (RFC 5246 §7.4.2), built once."""
        from ._codec12 import certificate12

        return certificate12(self.chain_der)

    @classmethod
    def from_pem(cls, chain_pem: bytes, key_pem: bytes, names: Sequence[str] | None = None,
                 *, key_ref: str | None = None) -> CertificateEntry:
        """Build from a PEM chain (leaf first, then intermediates) and a PEM key.

        ``key_pem`` may be empty in keyless mode when ``key_ref`` names the key
        for a provider that holds it.
        """
        from cryptography import x509
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

        from ._provider import load_private_key_pem

        blocks = _pem_blocks(chain_pem, b"CERTIFICATE")
        if not blocks:
            raise CertificateLoadError("cert", "certificate chain: no PEM CERTIFICATE block found")
        try:
            certs = [x509.load_pem_x509_certificate(b) for b in blocks]
            leaf_pub = certs[0].public_key()
            key_type = key_type_of(leaf_pub)
        except ValueError as exc:
            raise CertificateLoadError("cert", f"certificate chain: {exc}") from exc
        if key_pem:
            try:
                priv = load_private_key_pem(key_pem)
            except ValueError as exc:
                raise CertificateLoadError("key", str(exc)) from exc
            spki = (Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
            if priv.public_key().public_bytes(*spki) != leaf_pub.public_bytes(*spki):
                raise CertificateLoadError("key", "private key does not match the leaf certificate")
        elif key_ref is None:
            raise CertificateLoadError("key", "no private key: give key_pem or key_ref (keyless)")
        if names is None:
            names = _names_of(certs[0])
        names = tuple(n.lower().rstrip(".") for n in names)
        chain = tuple(c.public_bytes(Encoding.DER) for c in certs)
        return cls(chain, key_pem, names, key_type, key_ref)

    @classmethod
    def from_pem_files(cls, cert_chain_path: str | os.PathLike, key_path: str | os.PathLike | None,
                       names: Sequence[str] | None = None, *, key_ref: str | None = None
                       ) -> CertificateEntry:
        """Errors are ``CertificateLoadError`` naming the file at fault first."""
        paths = {"cert": cert_chain_path, "key": key_path}
        pems = {"cert": b"", "key": b""}
        for part, path in paths.items():
            if path is None:
                continue
            try:
                with open(path, "rb") as f:
                    pems[part] = f.read()
            except OSError as exc:
                raise CertificateLoadError(part, f"{path}: cannot read: {exc.strerror}") from exc
        try:
            return cls.from_pem(pems["cert"], pems["key"], names, key_ref=key_ref)
        except CertificateLoadError as exc:
            path = paths[exc.part]
            raise CertificateLoadError(exc.part, f"{path}: {exc}" if path is not None else str(exc)) from exc

    def matches(self, server_name: str) -> int:
        """2 = exact match, 1 = wildcard match, 0 = no match."""
        best = 0
        for name in self.names:
            if name == server_name:
                return 2
            if name.startswith("*.") and "." in server_name:
                head, _, rest = server_name.partition(".")
                if head and rest == name[2:]:
                    best = 1
        return best

    def signing_key(self, provider: CryptoProvider) -> SigningKey:
        """The provider's handle on our key, loaded once per provider."""
        key = self._signing_keys.get(provider)
        if key is None:
            key = provider.load_signing_key(self.key_pem, key_ref=self.key_ref)
            self._signing_keys[provider] = key
        return key


def _schemes13(preference: Sequence[str], entry: CertificateEntry) -> tuple[tuple[str, int], ...]:
    return tuple((s, SCHEME_IDS[s]) for s in preference
                 if s in entry.schemes and not s.startswith("rsa_pkcs1_"))


def _names_of(cert) -> tuple[str, ...]:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = san.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        dns = []
    if dns:
        return tuple(dns)
    return tuple(a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME))


class TicketKeyring:
    """Ticket-sealing keys: ``current()`` seals, ``all()`` opens (newest first)."""

    def __init__(self, keys: Sequence[bytes], rotate_after_s: float | None):
        self._lock = threading.Lock()
        self._fixed = bool(keys)
        self._keys = list(keys) or [os.urandom(32)]
        self._rotate_after_s = rotate_after_s
        self._rotated_at: float | None = None

    def current(self, now_s: float) -> bytes:
        with self._lock:
            if not self._fixed and self._rotate_after_s:
                if self._rotated_at is None:
                    self._rotated_at = now_s
                elif now_s - self._rotated_at >= self._rotate_after_s:
                    self._keys = [os.urandom(32), self._keys[0]]
                    self._rotated_at = now_s
            return self._keys[0]

    def all(self) -> tuple[bytes, ...]:
        return tuple(self._keys)


@dataclasses.dataclass(frozen=True)
class TicketConfig:
    enabled: bool = True
    keys: tuple[bytes, ...] = ()
    lifetime_s: int = 7200
    rotate_after_s: float = 3600 * SECONDS
    #: How many tickets to send after a full handshake (clients keep one per connection).
    count: int = 1

    def __post_init__(self):
        for i, k in enumerate(self.keys):
            if not isinstance(k, bytes) or len(k) != 32:
                raise ValueError(f"tickets.keys[{i}]: must be 32 bytes")
        # RFC 8446 §4.6.1: lifetime MUST NOT exceed 604800 seconds (7 days).
        if not 0 < self.lifetime_s <= 604800:
            raise ValueError("tickets.lifetime_s: must be in 1..604800")
        if not 0 <= self.count <= 8:
            raise ValueError("tickets.count: must be in 0..8")


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    """What a TLS server offers and how its streams behave (validated on creation).

    ``small_record_threshold_bytes`` (T) splits record protection between the
    provider and the process: a record whose plaintext content is strictly
    below T bytes (``len(content) < T``) is sealed or opened in-process with
    the ``AeadSession``'s sync ``seal``/``open``; every record at or above T
    goes through ``seal_many``/``open_many``. T = 0 (the default) sends every
    record to the provider; T = 16385 (2^14 + 1) keeps every record in-process. Content excludes the inner content-type byte; on
    receive, where only the ciphertext length is known, the peer's padding
    counts as content, so a padded record may go to the provider although its
    content is under T (never the other way round). One exception: a fatal
    alert (2 bytes) is always sealed in-process, since the provider may be
    the very thing that failed.
    """

    certificates: Sequence[CertificateEntry]
    alpn_protocols: Sequence[str] = ()
    cipher_suites: Sequence[str] | None = None
    #: Protocol versions served ("1.2", "1.3"); None: both.
    versions: Sequence[str] | None = None
    #: Lowest version served (drops lower ones from ``versions``); None: no floor.
    min_version: str | None = None
    #: RFC 7627: refuse a TLS 1.2 client without extended_master_secret
    #: (handshake_failure). False serves it with the RFC 5246 master secret.
    require_extended_master_secret: bool = True
    groups: Sequence[str] | None = None
    signature_schemes: Sequence[str] | None = None
    tickets: TicketConfig = TicketConfig()
    handshake_timeout_s: float = 10 * SECONDS
    max_handshake_message_bytes: int = 32768
    #: Server-initiated KeyUpdate after this many records under one write key (0 = never).
    key_update_after_records: int = 0
    #: Records with plaintext strictly below this many bytes are sealed/opened
    #: in-process; at or above it, through the provider (see the class docstring).
    small_record_threshold_bytes: int = 0
    #: AEAD items per ``seal_many`` / ``open_many`` batch (vcrypto opdone: ≤ 16).
    pipeline_depth: int = 16
    ticket_keyring: TicketKeyring = dataclasses.field(init=False, repr=False, compare=False)
    _schemes13: dict = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self):
        # Every problem is collected (check-config reports them all); a check
        # that depends on an earlier, invalid field runs on its valid part.
        set_ = object.__setattr__
        problems: list[tuple[str, str]] = []
        certs = tuple(self.certificates)
        if not certs:
            problems.append(("certificates", "at least one certificate is required"))
        for i, c in enumerate(certs):
            if not isinstance(c, CertificateEntry):
                problems.append((f"certificates[{i}]", f"expected CertificateEntry, got {type(c).__name__}"))
        set_(self, "certificates", certs)
        for field, allowed in (("cipher_suites", CIPHER_SUITES), ("groups", GROUPS),
                               ("signature_schemes", SIGNATURE_SCHEMES)):
            value = getattr(self, field)
            value = allowed if value is None else tuple(value)
            for v in value:
                if v not in allowed:
                    problems.append((field, f"unknown {v!r} (supported: {', '.join(allowed)})"))
            if not value:
                problems.append((field, "must not be empty"))
            set_(self, field, value)
        versions = VERSIONS if self.versions is None else tuple(self.versions)
        for v in versions:
            if v not in VERSIONS:
                problems.append(("versions", f"unsupported {v!r} (supported: {', '.join(VERSIONS)};"
                                             " SSL 3.0, TLS 1.0 and 1.1 are not negotiable, RFC 8996)"))
        versions = tuple(v for v in versions if v in VERSIONS)
        if self.min_version is not None:
            if self.min_version not in VERSIONS:
                problems.append(("min_version", f"unsupported {self.min_version!r} "
                                                f"(supported: {', '.join(VERSIONS)})"))
            else:
                versions = tuple(v for v in versions if v >= self.min_version)
        if not versions:
            problems.append(("versions", "no protocol version left to serve"))
        set_(self, "versions", versions)
        for version, names in (("1.3", CIPHER_SUITES_TLS13), ("1.2", CIPHER_SUITES_TLS12)):
            if version in versions and not any(n in names for n in self.cipher_suites):
                problems.append(("cipher_suites", f"no TLS {version} suite, but versions "
                                                  f"includes {version} (one of: {', '.join(names)})"))
        if "1.2" in versions and not any(g in GROUPS_ECDHE for g in self.groups):
            # draft-ietf-tls-ecdhe-mlkem: the hybrids are TLS 1.3 NamedGroups only.
            problems.append(("groups", f"no TLS 1.2 group (the hybrids are TLS 1.3 only), but "
                                       f"versions includes 1.2 (one of: {', '.join(GROUPS_ECDHE)})"))
        alpn = tuple(self.alpn_protocols)
        for p in alpn:
            if not 0 < len(p.encode()) < 256:
                problems.append(("alpn_protocols", f"{p!r} must be 1..255 bytes"))
        set_(self, "alpn_protocols", alpn)
        if self.handshake_timeout_s <= 0:
            problems.append(("handshake_timeout_s", "must be > 0"))
        if not 1024 <= self.max_handshake_message_bytes <= 1 << 24:
            problems.append(("max_handshake_message_bytes", "must be in 1024..16777216"))
        if self.key_update_after_records < 0:
            problems.append(("key_update_after_records", "must be >= 0"))
        # RFC 8446 §5.1: content is at most 2^14 bytes, so 2^14 + 1 keeps every
        # record in-process (only the handshake's ECDH and signature offloaded)
        if not 0 <= self.small_record_threshold_bytes <= 16385:
            problems.append(("small_record_threshold_bytes", "must be in 0..16385"))
        if not 1 <= self.pipeline_depth <= 16:
            problems.append(("pipeline_depth", "must be in 1..16"))
        if problems:
            raise ServerConfigError(problems)
        set_(self, "ticket_keyring", TicketKeyring(self.tickets.keys, self.tickets.rotate_after_s))
        # by id(): the entries live in self.certificates as long as the config
        set_(self, "_schemes13", {id(c): _schemes13(self.signature_schemes, c) for c in certs})

    def select_certificates(self, server_name: str | None) -> list[CertificateEntry]:
        """Candidates for ``server_name`` in preference order (default entry last resort)."""
        return self.rank_certificates(server_name)[0]

    def rank_certificates(self, server_name: str | None) -> tuple[list[CertificateEntry], bool]:
        """(``select_certificates``, whether the first candidate's names match
        the SNI): each entry's names are compared once, not once per question."""
        if server_name:
            name = server_name.lower().rstrip(".")
            exact, wild = [], []
            for c in self.certificates:
                level = c.matches(name)
                if level == 2:
                    exact.append(c)
                elif level == 1:
                    wild.append(c)
            if exact or wild:
                return exact + wild, True
        return list(self.certificates), False

    def schemes13(self, entry: CertificateEntry) -> tuple[tuple[str, int], ...]:
        """(scheme, code point) pairs ``entry`` may sign a TLS 1.3 CertificateVerify
        with, in our preference order: built once per entry, not per handshake.
        RFC 8446 §4.2.3: rsa_pkcs1_* never signs a CertificateVerify."""
        table = self._schemes13.get(id(entry))
        if table is None:  # (an entry that is not ours: computed, not cached)
            table = _schemes13(self.signature_schemes, entry)
        return table


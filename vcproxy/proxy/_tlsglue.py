"""The seam between the proxy and ``vcproxy.tls``: configs, providers, counting.

The proxy never touches TLS internals: it builds a ``ServerConfig`` per
listener from the YAML, picks a ``CryptoProvider``, wraps it so every
operation is counted in the metrics (``CountingProvider``) and, with
``crypto.fallback: per_op``, redone inline when the vcrypto provider fails
(``FallbackProvider``).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable

from vcproxy.config import CertificateConfig, Config, ListenerConfig
from vcproxy.tls import (
    AeadSession,
    CertificateEntry,
    CryptoProvider,
    CryptoProviderError,
    InlineProvider,
    KeyShare,
    ServerConfig,
    SigningKey,
    TicketConfig,
)
from vcproxy.vcrypto_provider import VcryptoProvider

#: (op, provider_name, n) -> None: ``n`` more ops; the metrics hook (a Counter's
#: labels().inc in workers). A batch of records is one call (count per batch, not
#: per record: this runs on every send_all).
CountOp = Callable[[str, str, int], None]
CountFallback = Callable[[str, str], None]


class ProviderUnavailable(Exception):
    """The configured crypto provider cannot be used right now."""


def load_certificate(cert: CertificateConfig) -> CertificateEntry:
    return CertificateEntry.from_pem_files(cert.cert, cert.key, cert.names, key_ref=cert.key_ref)


def read_ticket_keys(path: str | None) -> tuple[bytes, ...]:
    """The supervisor's shared ticket keys: one hex line each, newest first."""
    if path is None:
        return ()
    with open(path, encoding="ascii") as f:
        return tuple(bytes.fromhex(line.strip()) for line in f if line.strip())


def build_server_config(listener: ListenerConfig, config: Config,
                        ticket_keys: tuple[bytes, ...] = (),
                        certificates: list[CertificateEntry] | None = None) -> ServerConfig:
    """ServerConfig for one listener; raises ``CertificateLoadError`` or
    ``ServerConfigError`` (ValueErrors) naming the problems. ``certificates``:
    the listener's, already loaded (check-config loads them one by one).

    ``ticket_keys`` are shared by all workers (the supervisor makes them), so a
    ticket issued by one worker resumes on any other behind SO_REUSEPORT.
    """
    tls = listener.tls
    return ServerConfig(
        certificates=(certificates if certificates is not None
                      else [load_certificate(c) for c in tls.certificates]),
        alpn_protocols=listener.alpn(),
        cipher_suites=tls.cipher_suites,
        versions=tls.versions,
        min_version=tls.min_version,
        require_extended_master_secret=tls.require_extended_master_secret,
        groups=tls.groups,
        tickets=TicketConfig(enabled=tls.tickets.enabled, lifetime_s=tls.tickets.lifetime_s, keys=ticket_keys),
        handshake_timeout_s=config.limits.handshake_timeout_s,
        small_record_threshold_bytes=config.crypto.small_record_threshold_bytes,
        pipeline_depth=config.crypto.pipeline_depth,
    )


# --------------------------------------------------------------------------
# Counting: every op the TLS stack asks for, labelled by where it ran.
# --------------------------------------------------------------------------

class _CountingAead(AeadSession):
    def __init__(self, inner: AeadSession, provider_name: str, count: CountOp) -> None:
        self._inner = inner
        self.alg = inner.alg
        self._name = provider_name
        self._count = count

    # The sync path is the small-record path: it runs in this process whatever
    # the provider, so it is counted as "inline".
    def seal(self, nonce: bytes, aad: bytes, plaintext: bytes) -> bytes:
        self._count("aead_seal", "inline", 1)
        return self._inner.seal(nonce, aad, plaintext)

    def open(self, nonce: bytes, aad: bytes, ciphertext: bytes) -> bytes:
        self._count("aead_open", "inline", 1)
        return self._inner.open(nonce, aad, ciphertext)

    async def seal_many(self, items):
        out = await self._inner.seal_many(items)
        self._count("aead_seal", self._name, len(items))
        return out

    async def open_many(self, items):
        out = await self._inner.open_many(items)
        self._count("aead_open", self._name, len(items))
        return out

    async def aclose(self) -> None:
        await self._inner.aclose()

    @property
    def needs_aclose(self) -> bool:
        return self._inner.needs_aclose


class CountingProvider(CryptoProvider):
    """Counts each op under the name of the provider it was handed to.

    Ops a vcrypto provider ended up running in-process (engine away, or a
    failed op redone inline) are counted here under ``vcrypto`` *and* in
    ``crypto_fallbacks_total``; the small-record sync path is ``inline``.
    """

    def __init__(self, inner: CryptoProvider, count: CountOp,
                 on_keyless_failure: Callable[[str, Exception], None] | None = None) -> None:
        self.inner = inner
        self.name = inner.name
        self._count = count
        self._on_keyless_failure = on_keyless_failure

    async def key_exchange(self, group: str, peer_public: bytes, *,
                           private_key: bytes | None = None) -> tuple[bytes, bytes]:
        out = await self.inner.key_exchange(group, peer_public, private_key=private_key)
        self._count("ecdh", self.name, 1)
        return out

    def key_share(self, group: str) -> KeyShare | None:
        # (the pool's refills are counted by the pool: crypto_key_shares_total)
        return self.inner.key_share(group)

    async def derive_and_sign(self, group, peer_public, scalar, key, scheme, message):
        try:
            out = await self.inner.derive_and_sign(group, peer_public, scalar, key, scheme, message)
        except CryptoProviderError as exc:
            # (as ``sign``: a keyless key's host failing is worth knowing)
            if key.private_key_der is None and key.key_ref and self._on_keyless_failure is not None:
                self._on_keyless_failure(key.key_ref, exc)
            raise
        self._count("ecdh", self.name)
        self._count("sign", self.name)
        return out

    def load_signing_key(self, private_key_pem: bytes, *, key_ref: str | None = None) -> SigningKey:
        return self.inner.load_signing_key(private_key_pem, key_ref=key_ref)

    async def sign(self, key: SigningKey, scheme: str, message: bytes) -> bytes:
        try:
            out = await self.inner.sign(key, scheme, message)
        except CryptoProviderError as exc:
            # keyless: only the host holds the key, so nothing can redo it here
            if key.private_key_der is None and key.key_ref and self._on_keyless_failure is not None:
                self._on_keyless_failure(key.key_ref, exc)
            raise
        self._count("sign", self.name, 1)
        return out

    def aead(self, suite_alg: str, key: bytes) -> AeadSession:
        return _CountingAead(self.inner.aead(suite_alg, key), self.name, self._count)

    def random_bytes(self, n: int) -> bytes:
        return self.inner.random_bytes(n)


# --------------------------------------------------------------------------
# Fallback: vcrypto failed -> do this op inline (crypto.fallback: per_op).
# --------------------------------------------------------------------------

class _FallbackAead(AeadSession):
    def __init__(self, primary: AeadSession, backup: AeadSession, owner: "FallbackProvider") -> None:
        self._primary, self._backup, self._owner = primary, backup, owner
        self.alg = primary.alg

    def seal(self, nonce, aad, plaintext):
        return self._primary.seal(nonce, aad, plaintext)

    def open(self, nonce, aad, ciphertext):
        return self._primary.open(nonce, aad, ciphertext)

    async def seal_many(self, items):
        try:
            out = await self._primary.seal_many(items)
        except CryptoProviderError as exc:
            self._owner.fell_back("aead_seal", exc)
            return await self._backup.seal_many(items)
        return out

    async def open_many(self, items):
        try:
            out = await self._primary.open_many(items)
        except CryptoProviderError as exc:
            self._owner.fell_back("aead_open", exc)
            return await self._backup.open_many(items)
        return out

    async def aclose(self) -> None:
        try:
            await self._primary.aclose()
        finally:
            await self._backup.aclose()

    @property
    def needs_aclose(self) -> bool:
        return self._primary.needs_aclose or self._backup.needs_aclose


class FallbackProvider(CryptoProvider):
    """Runs ops on ``primary``; a ``CryptoProviderError`` reruns that op on ``backup``.

    Peer faults (``IllegalParameter``, ``BadRecordMac``) are not provider
    failures and are never retried: the inline result would be the same.
    """

    def __init__(self, primary: CryptoProvider, backup: CryptoProvider, on_fallback: CountFallback) -> None:
        self.primary, self.backup = primary, backup
        self.name = primary.name
        self._on_fallback = on_fallback

    def fell_back(self, op: str, exc: Exception) -> None:
        self._on_fallback(op, type(exc).__name__)

    async def key_exchange(self, group, peer_public, *, private_key=None):
        try:
            out = await self.primary.key_exchange(group, peer_public, private_key=private_key)
        except CryptoProviderError as exc:
            self.fell_back("ecdh", exc)
            return await self.backup.key_exchange(group, peer_public, private_key=private_key)
        return out

    def key_share(self, group):
        # The primary's pool: an empty one (its refills failing) means the
        # one-op path above, which falls back per op.
        return self.primary.key_share(group)

    async def derive_and_sign(self, group, peer_public, scalar, key, scheme, message):
        primary, _backup = key.handle
        try:
            return await self.primary.derive_and_sign(group, peer_public, scalar, primary, scheme, message)
        except CryptoProviderError:
            pass  # which op failed is not known here: each again, falling back on its own
        _own, shared = await self.key_exchange(group, peer_public, private_key=scalar)
        return shared, await self.sign(key, scheme, message)

    def load_signing_key(self, private_key_pem, *, key_ref=None):
        # Both sides need the key: the backup keeps its own handle in ``handle``.
        # Keyless (no key here, the host holds it): there is no backup to load,
        # and a failed signature fails the handshake (DESIGN §7).
        primary = self.primary.load_signing_key(private_key_pem, key_ref=key_ref)
        backup = (self.backup.load_signing_key(private_key_pem, key_ref=key_ref)
                  if private_key_pem else None)
        return dataclasses.replace(primary, handle=(primary, backup))

    async def sign(self, key, scheme, message):
        primary, backup = key.handle
        try:
            out = await self.primary.sign(primary, scheme, message)
        except CryptoProviderError as exc:
            if backup is None:
                raise
            self.fell_back("sign", exc)
            return await self.backup.sign(backup, scheme, message)
        return out

    def aead(self, suite_alg, key):
        return _FallbackAead(self.primary.aead(suite_alg, key), self.backup.aead(suite_alg, key), self)

    def random_bytes(self, n):
        return self.primary.random_bytes(n)


async def make_provider(config: Config, count: CountOp, on_fallback: CountFallback,
                        backend_socket: str | None,
                        on_keyless_failure: Callable[[str, Exception], None] | None = None
                        ) -> CryptoProvider:
    """The provider a worker uses, wrapped for counting (and per-op fallback).

    ``crypto.fallback`` decides what an unreachable engine means at start:
    ``none`` fails the worker, ``startup`` serves with the inline provider,
    ``per_op`` keeps the vcrypto provider (its frontend runs requests
    in-process while the backend is away and re-attaches when it is back) and
    also redoes inline any op the engine reports as failed.
    """
    crypto = config.crypto
    if crypto.provider == "inline":
        return CountingProvider(InlineProvider(), count)
    if backend_socket is None:
        raise ProviderUnavailable("crypto.provider: vcrypto: no engine-backend socket configured")
    primary = VcryptoProvider(backend_socket, stall_timeout_s=crypto.stall_timeout_s,
                              key_share_pool=crypto.key_share_pool,
                              key_share_lifetime_s=crypto.key_share_lifetime_s)
    if not await primary.frontend.start():
        if crypto.fallback == "none":
            raise ProviderUnavailable(f"crypto.provider: vcrypto: engine-backend at {backend_socket} unreachable")
        # Keyless certificates cannot be served in-process: the vcrypto
        # provider stays (its frontend computes ECDH and records in-process
        # until the engine is back; keyless signatures fail cleanly meanwhile).
        if crypto.fallback == "startup" and not _has_keyless(config):
            on_fallback("startup", "engine_unreachable")
            return CountingProvider(InlineProvider(), count)
    if crypto.fallback == "per_op":
        primary = FallbackProvider(primary, InlineProvider(), on_fallback)
    return CountingProvider(primary, count, on_keyless_failure)


def _has_keyless(config: Config) -> bool:
    return any(c.key_ref is not None for lis in config.listeners if lis.tls.enabled
               for c in lis.tls.certificates)


def certificate_not_after(config: Config) -> list[tuple[str, str, float]]:
    """(listener name, SNI name, leaf not-after as Unix time) for every name a
    TLS listener serves: what ``vcproxy_certificate_not_after_timestamp_seconds``
    exports. A certificate with no name (no SANs, no names[]) is listed with
    name "". Files that do not load are skipped (``check_files`` reports them)."""
    from cryptography import x509

    out = []
    for i, lis in enumerate(config.listeners):
        if not lis.tls.enabled:
            continue
        listener = config.listener_name(i)
        for cert in lis.tls.certificates:
            try:
                entry = load_certificate(cert)
            except (OSError, ValueError):
                continue
            not_after = x509.load_der_x509_certificate(entry.chain_der[0]).not_valid_after_utc.timestamp()
            for name in entry.names or ("",):
                out.append((listener, name, not_after))
    return out

"""``VcryptoProvider``: the TLS ``CryptoProvider`` seam implemented on the
vcrypto engine frontend.

This adapter is the only place vcproxy and vcrypto meet (DESIGN.md §10: the
TLS stack imports neither; vcrypto never imports vcproxy). Every key
exchange, signature and record batch becomes engine requests:

- ``key_exchange(group, peer)`` -> one ECDH request (keygen + derive in one
  op) on the shared per-group session; with ``private_key`` the keyed form
  (src = scalar || peer), against a client's share derive-only (the secret
  alone, ``own_public`` returned empty: the handshake sent it already);
- ``key_share(group)`` -> a share from this worker's ``KeySharePool``
  (``vcproxy.tls``), which refills itself with keyed-form keygens against
  the group's base point, ``size`` of them in one ``Frontend.run`` (one
  opdone per 16: one device batch), in the background. A full handshake
  that gets one runs ``derive_and_sign``: its derive (shared secret only)
  and its signature are both published by one task before it waits
  (``Frontend.run_together``): the kicker rings once, one device batch;
- ``sign(key, scheme, message)`` -> one SIGN request on the session for
  (scheme, key), found through the local handle table and the backend's
  shared session cache, so every connection (and every worker) with the same
  certificate key reuses one host session;
- ``aead(alg, key)`` -> a ``VcryptoAead`` whose ``seal_many``/``open_many``
  submit a batch (<= 16 per opdone: one suspension per batch). The traffic
  key travels in each request's slot (stateless AEAD: no host session, no
  control round trip) unless the engine-backend runs with
  ``--aead-sessions``; then its host session is created on first use, so
  records sealed in-process (the sync ``seal``/``open`` below the TLS
  small-record threshold) never cost a session at the host.

What is offloaded is decided once per kind of decision: record size by the
TLS record layer (``small_record_threshold_bytes``: below it the sync path,
at or above it ``seal_many``/``open_many`` here, always offloaded); what an
unreachable or failing engine means by ``crypto.fallback`` in the proxy's
``make_provider`` (``FallbackProvider`` for ``per_op``); the frontend only
runs in-process what the engine cannot take at that moment (detached,
device down, a session the device refused, an input larger than a slot's
data chunk).

When the engine cannot take a request (backend or host down) the frontend
runs it in-process and counts it; the TLS layer never sees the difference.
The provider is bound lazily to the trio run that first uses it.
"""
from __future__ import annotations

import weakref
from collections.abc import Sequence

from cryptography.hazmat.primitives import serialization

from vcproxy.tls import (BASE_POINTS, SCHEMES_BY_KEY_TYPE, AeadSession, BadRecordMac, CryptoProvider,
                         CryptoProviderError, IllegalParameter, KeyShare, KeySharePool, SigningKey,
                         ecdhe_scalar, key_type_of, load_private_key_pem)
from vcrypto.engine import (EngineSession, EngineUnavailable, Frontend, InlineOpError, InlineSession,
                            SessionMeta, SlotStatus, ecdh_split)
from vcrypto.ops import ECDH_SECRET_BYTES, HYBRID_KX_ALGS, KX_PEER_BYTES, Alg, Op

_SIGN_SCHEMES = tuple(sorted(a.value for a in (
    Alg.ECDSA_SECP256R1_SHA256, Alg.ECDSA_SECP384R1_SHA384, Alg.RSA_PSS_RSAE_SHA256,
    Alg.RSA_PSS_RSAE_SHA384, Alg.RSA_PSS_RSAE_SHA512, Alg.ED25519,
    Alg.RSA_PKCS1_SHA256, Alg.RSA_PKCS1_SHA384, Alg.RSA_PKCS1_SHA512)))
#: The peer share each group sends (a hybrid's: its whole client share).
_GROUP_PEER_BYTES = {alg.value: n for alg, n in KX_PEER_BYTES.items()}
_HYBRIDS = frozenset(a.value for a in HYBRID_KX_ALGS)
_EC_POINT_GROUPS = frozenset({Alg.SECP256R1.value, Alg.SECP384R1.value})


def _check(status: SlotStatus, what: str) -> None:
    if status is SlotStatus.OK:
        return
    if status is SlotStatus.BAD_MESSAGE:
        raise BadRecordMac(f"{what}: record failed AEAD authentication")
    raise CryptoProviderError(f"vcrypto {what}: {status.name}")


class VcryptoAead(AeadSession):
    """Record protection under one traffic key, offloaded in batches."""

    def __init__(self, provider: VcryptoProvider, alg: str, key: bytes):
        try:
            self._alg = Alg(alg)
        except ValueError:
            raise ValueError(f"unknown AEAD {alg!r}") from None
        self.alg = alg
        self._p = provider
        self._key = key
        self._seal_meta = SessionMeta(Op.AEAD_SEAL, self._alg, key)
        self._open_meta = SessionMeta(Op.AEAD_OPEN, self._alg, key)
        self._handles: dict[Op, EngineSession] = {}
        self._finalizer: weakref.finalize | None = None
        # in-process path (sync seal/open): the same code the frontend falls back to
        self._local = {Op.AEAD_SEAL: InlineSession(self._seal_meta),
                       Op.AEAD_OPEN: InlineSession(self._open_meta)}

    def seal(self, nonce: bytes, aad: bytes, plaintext: bytes) -> bytes:
        return self._local[Op.AEAD_SEAL].perform(plaintext, nonce, aad)

    def open(self, nonce: bytes, aad: bytes, ciphertext: bytes) -> bytes:
        try:
            return self._local[Op.AEAD_OPEN].perform(ciphertext, nonce, aad)
        except InlineOpError:
            raise BadRecordMac("record failed AEAD authentication") from None

    async def _run(self, op: Op, items: Sequence[tuple[bytes, bytes, bytes]]) -> list[bytes]:
        fe = self._p.frontend
        h = self._handles.get(op)
        if h is None:
            meta = self._seal_meta if op is Op.AEAD_SEAL else self._open_meta
            h = self._handles[op] = await fe.open_session(meta)
            if self._finalizer is None:
                # A stream dropped without aclose() still gives its sessions back.
                self._finalizer = weakref.finalize(self, _release_all, fe, self._handles)
        res = await fe.run(h, [(d, n, a) for n, a, d in items])
        out = []
        for status, data in res:
            _check(status, op.value)
            out.append(data)
        return out

    async def seal_many(self, items):
        return await self._run(Op.AEAD_SEAL, items)

    async def open_many(self, items):
        return await self._run(Op.AEAD_OPEN, items)

    async def aclose(self) -> None:
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        handles = list(self._handles.values())
        self._handles.clear()
        fe = self._p.frontend
        for i, h in enumerate(handles):
            try:
                await fe.close_session(h, linger=False)
            except BaseException:
                # cut off (the stream bounds its close): the reaper task
                # releases what is left, so no host session outlives us
                for rest in handles[i + 1:]:
                    fe.release_soon(rest)
                raise


def _release_all(frontend: Frontend, handles: dict) -> None:
    for h in handles.values():
        frontend.release_soon(h)
    handles.clear()


class VcryptoProvider(CryptoProvider):
    """The TLS crypto provider on the vcrypto engine frontend."""

    name = "vcrypto"

    def __init__(self, engine_socket: str, *, linger_s: float = 1.0, frontend: Frontend | None = None,
                 stall_timeout_s: float | None = None, key_share_pool: int = 32,
                 key_share_lifetime_s: float = 30.0):
        # stall_timeout_s is the engine's deadline (crypto.stall_timeout_s,
        # the backend's for the host); the frontend gives up on the backend
        # itself after twice that (data requests and control replies alike),
        # so a hung host is the backend's to fail.
        kw = {}
        if stall_timeout_s is not None:
            kw = {"stall_timeout_s": 2 * stall_timeout_s,
                  "control_timeout_s": min(5.0, 2 * stall_timeout_s)}
        self.frontend = frontend or Frontend(engine_socket, linger_s=linger_s, **kw)
        #: This worker's pre-generated key shares (``key_share_pool`` per
        #: group; 0: off, every full handshake runs the one-op exchange first).
        self.key_shares = KeySharePool(self._generate_key_shares, size=key_share_pool,
                                       lifetime_s=key_share_lifetime_s)

    def key_share(self, group: str) -> KeyShare | None:
        if group not in BASE_POINTS:  # a hybrid: ML-KEM needs the client's key
            return None
        return self.key_shares.take(group)

    async def _generate_key_shares(self, group: str, n: int) -> list[KeyShare]:
        """``n`` key pairs: keyed-form ECDH of fresh scalars against the base
        point, in one ``run`` (one opdone per 16, submitted together). A
        request that failed is left out (the pool counts a refill that got
        none). None while the engine is away: the frontend would compute
        them in-process, which saves no round trip (the one-op exchange runs
        in-process meanwhile, with one multiplication fewer)."""
        alg = Alg(group)
        base = BASE_POINTS[group]
        fe = self.frontend
        if not await fe.start():  # (waits for a first attach in progress)
            return []
        att = fe.attachment
        if att is None or not att.shared.device_up:
            return []
        h = await fe.open_session(SessionMeta(Op.ECDH, alg))
        try:
            scalars = [ecdhe_scalar(group, self.random_bytes) for _ in range(n)]
            results = await fe.run(h, [(s + base, b"", b"") for s in scalars])
        finally:
            await fe.close_session(h)
        return [KeyShare(group, ecdh_split(alg, out)[0], scalar)
                for scalar, (status, out) in zip(scalars, results) if status is SlotStatus.OK]

    async def derive_and_sign(self, group: str, peer_public: bytes, scalar: bytes, key: SigningKey,
                              scheme: str, message: bytes) -> tuple[bytes, bytes]:
        self._check_share(group, peer_public, scalar)
        if scheme not in key.schemes:
            raise CryptoProviderError(f"key of type {key.key_type} cannot sign {scheme}")
        alg = Alg(group)
        fe = self.frontend
        kx = await fe.open_session(SessionMeta(Op.ECDH, alg))
        sg = await fe.open_session(self._sign_meta(key, scheme))
        secret_bytes = ECDH_SECRET_BYTES[alg]
        try:
            # The derive asks for the secret only (dst room for it alone,
            # ``vcrypto.ops``): the host then skips recomputing our public key.
            (kst, out), (sst, sig) = await fe.run_together([
                (kx, (scalar + peer_public, b"", b""), secret_bytes),
                (sg, (message, b"", b""), 0)])
        except EngineUnavailable as exc:
            raise CryptoProviderError(f"vcrypto derive and sign: {exc}") from exc
        finally:
            await fe.close_session(kx)
            await fe.close_session(sg)
        if kst is SlotStatus.INVALID:
            raise IllegalParameter(f"{group} key share rejected")
        _check(kst, "key exchange")
        _check(sst, "sign")
        # (an in-process redo computes the full form: the secret is its tail)
        return out[len(out) - secret_bytes:], sig

    @staticmethod
    def _check_share(group: str, peer_public: bytes, private_key: bytes | None) -> None:
        size = _GROUP_PEER_BYTES.get(group)
        if size is None:
            raise CryptoProviderError(f"unsupported group {group!r}")
        if group in _HYBRIDS and private_key is not None:
            raise CryptoProviderError(f"{group}: a hybrid has no keyed form (TLS 1.3 only)")
        # RFC 8446 §4.2.8.2: X25519 keys are 32 bytes; EC shares uncompressed
        # points. draft-ietf-tls-ecdhe-mlkem: a hybrid share of any other than
        # its exact length is illegal_parameter (its key and point: the host's).
        if len(peer_public) != size or (group in _EC_POINT_GROUPS and peer_public[0] != 4):
            raise IllegalParameter(f"{group} key share of {len(peer_public)} bytes is malformed")

    async def key_exchange(self, group: str, peer_public: bytes, *,
                           private_key: bytes | None = None) -> tuple[bytes, bytes]:
        self._check_share(group, peer_public, private_key)
        alg = Alg(group)
        fe = self.frontend
        h = await fe.open_session(SessionMeta(Op.ECDH, alg))
        try:
            if private_key is None:
                [(status, out)] = await fe.run(h, [(peer_public, b"", b"")])
            elif peer_public == BASE_POINTS[group]:  # keyed form: our share
                [(status, out)] = await fe.run(h, [(private_key + peer_public, b"", b"")])
            else:
                # keyed form against the client's share (TLS 1.2's derive): the
                # secret only (dst room for it alone, vcrypto.ops): we sent our
                # share already, the host need not recompute it.
                n = ECDH_SECRET_BYTES[alg]
                [(status, out)] = await fe.run_together([(h, (private_key + peer_public, b"", b""), n)])
                if status is SlotStatus.OK:
                    return b"", out[len(out) - n:]  # (an in-process redo: the full form's tail)
        finally:
            await fe.close_session(h)
        if status is SlotStatus.INVALID:
            raise IllegalParameter(f"{group} key share rejected")
        _check(status, "key exchange")
        return ecdh_split(alg, out)

    def load_signing_key(self, private_key_pem: bytes, *, key_ref: str | None = None) -> SigningKey:
        if not private_key_pem:
            if key_ref is None:
                raise ValueError("a private key PEM or a key_ref is required")
            # Keyless with no local key at all: the host validates the scheme
            # against the key it holds.
            return SigningKey("keyless", _SIGN_SCHEMES, key_ref, None)
        key = load_private_key_pem(private_key_pem)
        key_type = key_type_of(key)
        der = None
        if key_ref is None:  # keyless mode: the key stays with the host
            der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        return SigningKey(key_type, SCHEMES_BY_KEY_TYPE[key_type], key_ref, der)

    async def sign(self, key: SigningKey, scheme: str, message: bytes) -> bytes:
        if scheme not in key.schemes:
            raise CryptoProviderError(f"key of type {key.key_type} cannot sign {scheme}")
        fe = self.frontend
        h = await fe.open_session(self._sign_meta(key, scheme))
        try:
            [(status, sig)] = await fe.run(h, [(message, b"", b"")])
        except EngineUnavailable as exc:
            raise CryptoProviderError(f"vcrypto sign: {exc}") from exc
        finally:
            await fe.close_session(h)
        _check(status, "sign")
        return sig

    @staticmethod
    def _sign_meta(key: SigningKey, scheme: str) -> SessionMeta:
        return SessionMeta(Op.SIGN, Alg(scheme), key.private_key_der or b"", key.key_ref or "")

    def aead(self, suite_alg: str, key: bytes) -> AeadSession:
        return VcryptoAead(self, suite_alg, key)

    async def aclose(self) -> None:
        await self.frontend.aclose()

"""In-process crypto for the engine: the frontend's fallback path (backend or
host gone, records under the small-record threshold) and nothing else.

The contract is ``vcrypto.ops``: ``perform(session, src, iv, aad) -> dst``.
Errors are ``InlineOpError`` carrying the ``SlotStatus`` the device would
have reported, so a fallback result is indistinguishable from an offloaded
one. Loaded key objects are kept on the ``InlineSession`` (an ``AESGCM`` or
a private key costs microseconds to build).
"""
from __future__ import annotations

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from vcrypto.ops import AEAD_KEY_BYTES, Alg, Op, is_valid

from ._layout import SessionMeta, SlotStatus


class InlineOpError(Exception):
    def __init__(self, status: SlotStatus, detail: str):
        super().__init__(f"{status.name}: {detail}")
        self.status = status


_CURVES = {Alg.SECP256R1: (ec.SECP256R1, 65), Alg.SECP384R1: (ec.SECP384R1, 97)}
_HASH = {"sha256": hashes.SHA256, "sha384": hashes.SHA384, "sha512": hashes.SHA512}


class InlineSession:
    """A session executed in this process."""

    __slots__ = ("meta", "_obj")

    def __init__(self, meta: SessionMeta):
        if not is_valid(meta.op, meta.alg):
            raise InlineOpError(SlotStatus.NOT_SUPPORTED, f"{meta.alg.value} for {meta.op.value}")
        self.meta = meta
        self._obj = None
        if meta.op in (Op.AEAD_SEAL, Op.AEAD_OPEN):
            if len(meta.key) != AEAD_KEY_BYTES[meta.alg]:
                raise InlineOpError(SlotStatus.INVALID, f"{meta.alg.value} key of {len(meta.key)} bytes")
            cls = ChaCha20Poly1305 if meta.alg is Alg.CHACHA20_POLY1305 else AESGCM
            self._obj = cls(meta.key)
        elif meta.op is Op.SIGN:
            if not meta.key:
                raise InlineOpError(SlotStatus.NOT_SUPPORTED,
                                    f"keyless session {meta.key_ref!r}: no key in this process")
            try:
                self._obj = serialization.load_der_private_key(meta.key, password=None)
            except (ValueError, TypeError) as exc:
                raise InlineOpError(SlotStatus.INVALID, f"private key: {exc}") from exc

    def perform(self, src: bytes, iv: bytes = b"", aad: bytes = b"") -> bytes:
        op, alg = self.meta.op, self.meta.alg
        if op is Op.AEAD_SEAL:
            if len(iv) != 12:
                raise InlineOpError(SlotStatus.INVALID, f"iv of {len(iv)} bytes")
            return self._obj.encrypt(iv, src, aad)
        if op is Op.AEAD_OPEN:
            if len(iv) != 12:
                raise InlineOpError(SlotStatus.INVALID, f"iv of {len(iv)} bytes")
            try:
                return self._obj.decrypt(iv, src, aad)
            except InvalidTag:
                raise InlineOpError(SlotStatus.BAD_MESSAGE, "tag mismatch") from None
        if op is Op.ECDH:
            return _ecdh(alg, src)
        return _sign(self._obj, alg, src)


def _ecdh(alg: Alg, peer: bytes) -> bytes:
    try:
        if alg is Alg.X25519:
            if len(peer) != 32:
                raise ValueError(f"x25519 public key of {len(peer)} bytes")
            priv = x25519.X25519PrivateKey.generate()
            shared = priv.exchange(x25519.X25519PublicKey.from_public_bytes(peer))
            return priv.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw) + shared
        curve, size = _CURVES[alg]
        if len(peer) != size or peer[0] != 4:
            raise ValueError(f"{alg.value} public key is not an uncompressed point")
        pub = ec.EllipticCurvePublicKey.from_encoded_point(curve(), peer)
        priv = ec.generate_private_key(curve())
        shared = priv.exchange(ec.ECDH(), pub)
        own = priv.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
        return own + shared
    except ValueError as exc:
        raise InlineOpError(SlotStatus.INVALID, str(exc)) from exc


def _sign(key, alg: Alg, msg: bytes) -> bytes:
    name = alg.value
    if alg is Alg.ED25519 and isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(msg)
    if name.startswith("ecdsa_") and isinstance(key, ec.EllipticCurvePrivateKey):
        want = "secp256r1" if "256" in name else "secp384r1"
        if key.curve.name == want:
            return key.sign(msg, ec.ECDSA(_HASH[name[-6:]]()))
    if name.startswith("rsa_") and isinstance(key, rsa.RSAPrivateKey):
        h = _HASH[name[-6:]]
        pad = (padding.PSS(padding.MGF1(h()), h.digest_size) if "_pss_" in name
               else padding.PKCS1v15())
        return key.sign(msg, pad, h())
    raise InlineOpError(SlotStatus.INVALID, f"key does not match {name}")


def ecdh_split(alg: Alg, dst: bytes) -> tuple[bytes, bytes]:
    """Split an ECDH result into (own public key, shared secret)."""
    pub_len = 32 if alg is Alg.X25519 else _CURVES[alg][1]
    return dst[:pub_len], dst[pub_len:]


def dst_capacity(meta: SessionMeta, src_len: int) -> int:
    """Output buffer a request needs (``vcrypto.ops`` data contract)."""
    if meta.op is Op.AEAD_SEAL:
        return src_len + 16
    if meta.op is Op.AEAD_OPEN:
        return max(src_len - 16, 0)
    if meta.op is Op.ECDH:
        return {Alg.X25519: 64, Alg.SECP256R1: 65 + 32, Alg.SECP384R1: 97 + 48}[meta.alg]
    return 1024  # signatures: RSA-8192 is 1024 bytes; DER ECDSA P-384 <= 104

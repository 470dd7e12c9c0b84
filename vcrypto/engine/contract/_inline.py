"""In-process crypto for the engine: the frontend's fallback path (backend or
host gone, records under the small-record threshold) and the backend's
``LocalDevice``, and nothing else.

A thin adapter over ``vcrypto.crypto``, the same implementation the host's
resources run, so a fallback result is exactly what the host would have
given. Errors are ``InlineOpError`` carrying the ``SlotStatus`` the device
would have reported. The loaded key material (an ``AESGCM``, a parsed private
key: microseconds to build) is kept on the ``InlineSession``.
"""
from __future__ import annotations

from vcrypto import crypto
from vcrypto.crypto import ecdh_split
from vcrypto.ops import Op

from ._region import SlotStatus
from ._session_cache import SessionMeta

__all__ = ["InlineOpError", "InlineSession", "ecdh_split"]

#: What the host's answer to the same error is, as the engine reports it
#: (``_hostdevice`` maps the wire statuses onto these).
_STATUS = {
    crypto.CryptoError.Kind.BAD_MESSAGE: SlotStatus.BAD_MESSAGE,
    crypto.CryptoError.Kind.INVALID_INPUT: SlotStatus.INVALID,
    crypto.CryptoError.Kind.NOT_SUPPORTED: SlotStatus.NOT_SUPPORTED,
}


class InlineOpError(Exception):
    def __init__(self, status: SlotStatus, detail: str):
        super().__init__(f"{status.name}: {detail}")
        self.status = status


class InlineSession:
    """A session executed in this process."""

    __slots__ = ("meta", "_prepared")

    def __init__(self, meta: SessionMeta):
        self.meta = meta
        if meta.op is Op.SIGN and not meta.key:
            raise InlineOpError(SlotStatus.NOT_SUPPORTED,
                                f"keyless session {meta.key_ref!r}: no key in this process")
        try:
            self._prepared = crypto.Prepared(meta.op, meta.alg, meta.key)
        except crypto.CryptoError as exc:
            raise InlineOpError(_STATUS[exc.kind], exc.detail) from exc

    def perform(self, src: bytes, iv: bytes = b"", aad: bytes = b"", secret_only: bool = False) -> bytes:
        try:
            return self._prepared.perform(src, iv, aad, secret_only)
        except crypto.CryptoError as exc:
            raise InlineOpError(_STATUS[exc.kind], exc.detail) from exc
        except crypto.CryptoFault as exc:
            # The computation failed its own check (RSA re-verification): not
            # the request's fault, so it is reported like a device failure.
            raise InlineOpError(SlotStatus.DEVICE_ERROR, str(exc)) from exc

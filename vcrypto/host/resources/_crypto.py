"""The crypto itself, for the host's resources: ``perform(job) -> bytes``.

Every resource that really computes (``openssl`` in-process, ``workers`` in
child processes) calls this one function. It is a thin adapter over
``vcrypto.crypto`` (the one implementation, shared with the engine's
fallback path, so an in-process redo gives exactly the host's answer): it
maps ``CryptoError`` to ``CryptoOpError`` (the request is bad) and
``CryptoFault`` (an RSA signature failed its re-verification) to
``ResourceFault`` (the *resource* produced garbage: the scheduler retries
elsewhere). The data contract, the DER key cache by ``key_id`` and the AEAD
object cache are described and kept there.
"""
from __future__ import annotations

from vcrypto import crypto
from vcrypto.crypto import KEY_CACHE_SIZE
from vcrypto.host.resources._base import CryptoJob, CryptoOpError, ResourceFault

__all__ = ["perform", "load_private_key", "KEY_CACHE_SIZE"]


def _op_error(exc: crypto.CryptoError) -> CryptoOpError:
    return CryptoOpError(CryptoOpError.Kind(exc.kind.value), exc.detail)


def perform(job: CryptoJob) -> bytes:
    """Run one job synchronously; raise ``CryptoOpError`` for a bad request,
    ``ResourceFault`` when a computed result fails its own check."""
    try:
        return crypto.perform(job.op, job.alg, job.key, job.key_id, job.src, job.iv, job.aad,
                              job.secret_only)
    except crypto.CryptoError as exc:
        raise _op_error(exc) from exc
    except crypto.CryptoFault as exc:
        raise ResourceFault(str(exc)) from exc


def load_private_key(der: bytes) -> object:
    """Parse a DER (PKCS#8 or traditional) private key; ``CryptoOpError`` if bad."""
    try:
        return crypto.load_private_key(der)
    except crypto.CryptoError as exc:
        raise _op_error(exc) from exc

"""What the sans-IO handshake machines (TLS 1.3 ``_handshake``, TLS 1.2
``_handshake12``) emit and build on: the commands for the I/O adapter, the
``FinishedVerified`` proof, the ``State`` base class and the
``HandshakeContext`` a state works on (``ServerHandshake`` is one). Both
machines import this module; neither imports the other's states except
through ``ServerHandshake``'s version choice.
"""
from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable
from typing import Protocol

from . import _codec as c
from ._config import CertificateEntry, ServerConfig
from ._errors import TLSUsageError, UnexpectedMessage
from ._keyschedule import CipherSuite
from ._provider import KeyShare


class Epoch(enum.IntEnum):
    INITIAL = 0
    HANDSHAKE = 2
    APPLICATION = 3


@dataclasses.dataclass(frozen=True, slots=True)
class SendHandshake:
    epoch: Epoch
    data: bytes


@dataclasses.dataclass(frozen=True, slots=True)
class SendChangeCipherSpec:
    pass


@dataclasses.dataclass(frozen=True, slots=True)
class InstallKeys:
    direction: str  # "read" | "write"
    epoch: Epoch
    suite: CipherSuite
    secret: bytes = dataclasses.field(repr=False)


@dataclasses.dataclass(frozen=True, slots=True)
class SkipEarlyData:
    max_bytes: int
    #: True: skip records that fail to open under handshake keys; False: skip
    #: application_data records before the retried ClientHello (after HRR).
    encrypted: bool


@dataclasses.dataclass(frozen=True, slots=True)
class KeyExchange:
    group: str
    peer_public: bytes
    #: TLS 1.2: our ephemeral scalar (the keyed form, see ``_provider``).
    private_key: bytes | None = dataclasses.field(default=None, repr=False)


@dataclasses.dataclass(frozen=True, slots=True)
class Sign:
    certificate: CertificateEntry
    scheme: str
    message: bytes


@dataclasses.dataclass(frozen=True, slots=True)
class DeriveAndSign:
    """BLOCKING: run both ops *together* (neither waits for the other's
    result), then call ``derive_and_sign_done(shared, signature)`` (the derive
    under our own share: the provider returns the secret only).

    A TLS 1.3 full handshake with a pre-generated key share: the signature
    covers the transcript through Certificate, which holds our public share
    but not the secret, so both are known at ClientHello (one provider round
    trip instead of two)."""

    key_exchange: KeyExchange
    sign: Sign


@dataclasses.dataclass(frozen=True, slots=True)
class HandshakeInfo:
    server_name: str | None
    alpn_protocol: str | None
    cipher_suite: str
    named_group: str
    resumed: bool
    peer_record_size_limit: int | None
    hello_retry: bool
    version: str = "TLSv1.3"


@dataclasses.dataclass(frozen=True, slots=True)
class HandshakeComplete:
    info: HandshakeInfo


Command = (SendHandshake | SendChangeCipherSpec | InstallKeys | SkipEarlyData | KeyExchange
           | Sign | DeriveAndSign | HandshakeComplete)


@dataclasses.dataclass(frozen=True, slots=True)
class FinishedVerified:
    """Proof that the client's Finished verified (rustls's pattern)."""

    verify_data: bytes = dataclasses.field(repr=False)


class HandshakeContext(Protocol):
    """What a state reads and calls on the handshake it belongs to."""

    config: ServerConfig
    random_bytes: Callable[[int], bytes]
    now_s: Callable[[], float]
    #: A pre-generated ephemeral key pair for a group, used once, or None
    #: (the provider's ``key_share``; sync, like ``random_bytes``).
    key_share: Callable[[str], KeyShare | None]
    transcript: object
    version: str | None

    def emit(self, command: Command) -> None: ...

    @property
    def transcript_hash(self) -> bytes: ...


class State:
    expects = "nothing"
    #: The peer asked for a KeyUpdate we have not sent yet (only ``Connected``).
    owe_key_update = False

    def _unexpected(self, got: str) -> UnexpectedMessage:
        return UnexpectedMessage(f"{type(self).__name__}: expected {self.expects}, got {got}")

    def handle(self, hs: HandshakeContext, epoch: Epoch, message: bytes) -> State:
        raise self._unexpected(c.HANDSHAKE_NAMES.get(message[0], f"handshake type {message[0]}"))

    def on_key_exchange(self, hs: HandshakeContext, own_public: bytes, shared: bytes) -> State:
        raise TLSUsageError(f"{type(self).__name__}: no key exchange was requested")

    def on_signature(self, hs: HandshakeContext, signature: bytes) -> State:
        raise TLSUsageError(f"{type(self).__name__}: no signature was requested")

    def on_derive_and_sign(self, hs: HandshakeContext, shared: bytes, signature: bytes) -> State:
        raise TLSUsageError(f"{type(self).__name__}: no derive and signature were requested")

    def on_change_cipher_spec(self, hs: HandshakeContext) -> State:
        raise self._unexpected("ChangeCipherSpec")

    def update_write_keys(self, hs: HandshakeContext, request_peer: bool) -> State:
        raise TLSUsageError(f"{type(self).__name__}: KeyUpdate before the handshake completed")

"""vcproxy.tls: our TLS 1.3 and TLS 1.2 server, with every costly crypto op behind a provider.

Public surface (everything else is private):

- ``ServerConfig``, ``CertificateEntry``, ``TicketConfig``: what to serve
  (``ServerConfigError`` lists every bad field, ``CertificateLoadError``
  says whether the chain or the key file is at fault).
- ``TLSStream(transport_stream, config, provider)``: a ``trio.abc.Stream``
  used like ``trio.SSLStream`` (``do_handshake``, ``send_all``,
  ``receive_some``, ``aclose``), exposing ``server_name``, ``alpn_protocol``,
  ``cipher_suite``, ``version``, ``resumed``, ``named_group`` once the
  handshake is done.
- ``CryptoProvider`` / ``AeadSession`` / ``SigningKey``: the seam where key
  exchange, signatures and record AEAD run (see ``_provider``), with
  ``InlineProvider`` (``cryptography`` in-process) and helpers for other
  providers (``key_type_of``, ``SCHEMES_BY_KEY_TYPE``, ``load_private_key_pem``,
  ``inline_sign``; for pre-generated ECDHE shares ``KeyShare``,
  ``KeySharePool``, ``ecdhe_scalar``, ``BASE_POINTS``).
- ``TLSStream.write(data)``: queue bytes without I/O so the next ``send_all``
  puts them in the same record (headers + body leave together), or
  ``aclose`` sends them in one segment with the close_notify.
- ``TLSError`` (carries ``.alert``), ``TLSPeerError`` (the peer's fault),
  ``TLSAlertReceived``, ``TLSLocalError`` (ours), ``TLSUsageError`` (misuse).

Layout: ``_codec`` (wire formats), ``_record`` (record framing and
protection state), ``_keyschedule`` (RFC 8446 §7 stages), ``_handshake``
(sans-IO server state machine emitting commands), ``_keyshares`` (the
per-worker pool of pre-generated ECDHE shares), ``_tickets``, ``_protect``
(the record protector the stream owns), ``_stream`` (the trio adapter that
executes commands through the provider). TLS 1.2 (RFC 5246): ``_codec12``,
``_keyschedule12`` (PRF, extended master secret), ``_negotiate12`` (version
choice for every ClientHello), ``_handshake12``, ``_record12``.
"""
from ._config import CertificateEntry, CertificateLoadError, ServerConfig, ServerConfigError, TicketConfig
from ._errors import (
    AlertDescription,
    BadRecordMac,
    CryptoProviderError,
    DecodeError,
    HandshakeTimeout,
    IllegalParameter,
    TLSAlertReceived,
    TLSError,
    TLSLocalError,
    TLSPeerError,
    TLSUsageError,
)
from ._handshake import HandshakeInfo
from ._keyshares import KeySharePool
from ._provider import (
    BASE_POINTS,
    SCHEMES_BY_KEY_TYPE,
    AeadItem,
    AeadSession,
    CryptoProvider,
    InlineProvider,
    KeyShare,
    SigningKey,
    ecdhe_scalar,
    inline_sign,
    key_type_of,
    load_private_key_pem,
)
from ._stream import TLSStream

__all__ = [
    "BASE_POINTS", "KeyShare", "KeySharePool", "ecdhe_scalar", "SCHEMES_BY_KEY_TYPE", "AeadItem", "AeadSession", "AlertDescription", "BadRecordMac",
    "CertificateEntry", "CertificateLoadError", "CryptoProvider", "CryptoProviderError", "DecodeError",
    "HandshakeInfo", "HandshakeTimeout", "IllegalParameter", "InlineProvider", "ServerConfig", "ServerConfigError",
    "SigningKey", "TLSAlertReceived", "TLSError", "TLSLocalError", "TLSPeerError", "TLSStream",
    "TLSUsageError", "TicketConfig", "inline_sign", "key_type_of", "load_private_key_pem",
]

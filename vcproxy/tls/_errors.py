"""Typed TLS errors: every failure carries the alert it sends (RFC 8446 §6).

Three families, told apart at one place (``TLSStream``):

- ``TLSPeerError``: the peer broke the protocol (bad bytes, wrong message,
  bad MAC). We send the carried alert, then close lingeringly.
- ``TLSAlertReceived``: the peer sent us a fatal alert. Nothing is sent back.
- ``TLSLocalError``: our side failed (a crypto provider fault, a timeout, a
  configuration that cannot serve this client). Sends ``internal_error`` or
  the carried alert.

``TLSUsageError`` is API misuse (sending before the handshake, ...): it is a
programming error, not a TLS failure, and sends nothing.
"""
from __future__ import annotations

import enum


class AlertDescription(enum.IntEnum):
    close_notify = 0
    unexpected_message = 10
    bad_record_mac = 20
    record_overflow = 22
    handshake_failure = 40
    bad_certificate = 42
    unsupported_certificate = 43
    certificate_revoked = 44
    certificate_expired = 45
    certificate_unknown = 46
    illegal_parameter = 47
    unknown_ca = 48
    access_denied = 49
    decode_error = 50
    decrypt_error = 51
    protocol_version = 70
    insufficient_security = 71
    internal_error = 80
    inappropriate_fallback = 86
    user_canceled = 90
    no_renegotiation = 100
    missing_extension = 109
    unsupported_extension = 110
    unrecognized_name = 112
    bad_certificate_status_response = 113
    unknown_psk_identity = 115
    certificate_required = 116
    no_application_protocol = 120


class TLSError(Exception):
    """Base of every TLS failure. ``alert`` is the description sent (or received)."""

    alert: AlertDescription = AlertDescription.internal_error

    def __init__(self, message: str, alert: AlertDescription | None = None):
        if alert is not None:
            self.alert = alert
        super().__init__(f"{message} (alert {self.alert.name})")
        self.detail = message


class TLSPeerError(TLSError):
    """The peer violated the protocol; we answer with ``alert``."""


class DecodeError(TLSPeerError):
    """A message could not be parsed (bad length, truncated, trailing bytes)."""

    alert = AlertDescription.decode_error


class IllegalParameter(TLSPeerError):
    alert = AlertDescription.illegal_parameter


class UnexpectedMessage(TLSPeerError):
    alert = AlertDescription.unexpected_message


class BadRecordMac(TLSPeerError):
    """A record failed AEAD authentication (raised by ``AeadSession.open*``)."""

    alert = AlertDescription.bad_record_mac


class RecordOverflow(TLSPeerError):
    alert = AlertDescription.record_overflow


class HandshakeFailure(TLSPeerError):
    """No acceptable parameters in common with the client."""

    alert = AlertDescription.handshake_failure


class MissingExtension(TLSPeerError):
    alert = AlertDescription.missing_extension


class DecryptError(TLSPeerError):
    """A Finished MAC or PSK binder did not verify."""

    alert = AlertDescription.decrypt_error


class ProtocolVersionError(TLSPeerError):
    """The client offers no protocol version we speak (TLS ≤ 1.2 only)."""

    alert = AlertDescription.protocol_version


class NoApplicationProtocol(TLSPeerError):
    alert = AlertDescription.no_application_protocol


class TLSAlertReceived(TLSPeerError):
    """The peer sent a fatal alert (or an alert we treat as fatal)."""

    def __init__(self, alert: AlertDescription | int):
        try:
            alert = AlertDescription(alert)
        except ValueError:
            alert = AlertDescription.internal_error
        super().__init__(f"peer sent fatal alert {alert.name}", alert)


class TLSLocalError(TLSError):
    """Our side failed: provider fault, timeout, unusable configuration."""


class CryptoProviderError(TLSLocalError):
    """The crypto provider could not run an operation (a fault, not bad input)."""


class HandshakeTimeout(TLSLocalError):
    """The handshake did not finish within ``ServerConfig.handshake_timeout_s``."""


class TLSUsageError(Exception):
    """The API was used wrongly (not a protocol failure; sends nothing)."""

"""Wire formats shared by the driver and the host (they meet only here).

- ``vcrypto.wire.virtio_crypto``: virtio-crypto 1.2 session-create and data
  request layouts, status codes, and our documented vendor extensions (ECDH
  keygen+derive, Ed25519, RSA-PSS, key_ref).
- ``vcrypto.wire.vhost_user``: vhost-user framing, message numbers, payloads.
- ``vcrypto.wire.session_msg``: CREATE/CLOSE_CRYPTO_SESSION payloads (ours and
  QEMU 7.2's).
- ``vcrypto.wire.transport``: sending/receiving framed messages with fds on a
  trio unix socket (the only I/O in this package).
"""

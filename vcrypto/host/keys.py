"""Host-held private keys for keyless mode (sessions with a ``key_ref``).

At start-up the host loads every ``NAME.pem`` / ``NAME.der`` (unencrypted
private keys) in ``keys_dir``; a session naming ``key_ref: NAME`` signs with
it, so proxy workers never hold the certificate key (DESIGN §5). Keys are
kept as PKCS#8 DER, the form ``CryptoJob.key`` carries to any resource.
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from cryptography.hazmat.primitives import serialization

log = logging.getLogger("vcrypto.host.keys")


class KeyStoreError(Exception):
    pass


class KeyStore:
    def __init__(self, keys: dict[str, bytes] | None = None):
        self._keys = dict(keys or {})

    @classmethod
    def load_dir(cls, path: Path | None) -> KeyStore:
        keys: dict[str, bytes] = {}
        if path is None:
            return cls(keys)
        for file in sorted(path.iterdir()):
            if file.suffix not in (".pem", ".der") or not file.is_file():
                continue
            data = file.read_bytes()
            try:
                if file.suffix == ".pem":
                    key = serialization.load_pem_private_key(data, password=None)
                else:
                    key = serialization.load_der_private_key(data, password=None)
            except (ValueError, TypeError) as exc:
                raise KeyStoreError(f"{file}: not an unencrypted private key: {exc}") from exc
            keys[file.stem] = key.private_bytes(serialization.Encoding.DER,
                                                serialization.PrivateFormat.PKCS8,
                                                serialization.NoEncryption())
            log.info("loaded key %r from %s", file.stem, file)
        return cls(keys)

    def get(self, name: str) -> bytes | None:
        return self._keys.get(name)

    def names(self) -> list[str]:
        return sorted(self._keys)


def key_id_of(material: bytes) -> bytes:
    """Identifies key material for resource-side caches (not a secret)."""
    return hashlib.sha256(material).digest()[:16]

"""What check-config, ``vcproxy run`` and a reload add on top of the schema.

The schema (``vcproxy.config``) checks types, ranges and cross-references
without reading any file. ``check_files`` then loads every certificate and
key and builds each listener's TLS settings, so what the TLS stack refuses
(unknown suites, a key that is not the certificate's, a keyless ``key_ref``
vcrypto-host does not hold...) is refused here,
before a worker starts. Errors raise ``ConfigError``, every one of them,
each at the config path of the value at fault (``...certificates[0].key``
for a bad key file, ``...tls.groups`` for a bad group). Warnings are
returned: things that start but are probably not what was meant, a
certificate expired or expiring within ``EXPIRY_WARNING_DAYS``, a route no
request can ever reach.
"""
from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from vcproxy.config import Config, ConfigError
from vcproxy.tls import CertificateEntry, CertificateLoadError, ServerConfigError
from vcrypto.host.keys import KeyStore, KeyStoreError

from ._router import _host_score, never_matching
from ._tlsglue import build_server_config, load_certificate

#: A certificate ending within this many days is reported by check-config (and logged at start).
EXPIRY_WARNING_DAYS = 14

#: ``ServerConfig`` field -> the key that sets it, under ``listeners[i].`` when relative.
_FIELD_PATHS = {
    "certificates": "tls.certificates", "cipher_suites": "tls.cipher_suites", "groups": "tls.groups",
    "versions": "tls.versions", "min_version": "tls.min_version", "alpn_protocols": "tls.alpn",
    "handshake_timeout_s": "/limits.handshake_timeout_s",
    "small_record_threshold_bytes": "/crypto.small_record_threshold_bytes",
    "pipeline_depth": "/crypto.pipeline_depth",
}

Problem = tuple[str, str]


def check_files(config: Config, now: datetime.datetime | None = None) -> list[Problem]:
    """Load every certificate/key pair and build each listener's TLS config.

    Returns the warnings ``(path, message)``; raises ``ConfigError`` listing
    every error (its ``warnings`` carry the warnings found meanwhile).
    """
    now = now or datetime.datetime.now(datetime.timezone.utc)
    problems: list[Problem] = []
    warnings: list[Problem] = []
    served: dict[int, list[tuple[CertificateEntry, x509.Certificate]]] = {}
    leaves: dict[str, x509.Certificate] = {}  # certificate path -> its leaf, for the keyless check
    for i, lis in enumerate(config.listeners):
        if not lis.tls.enabled:
            continue
        entries = []
        for j, cert in enumerate(lis.tls.certificates):
            where = f"listeners[{i}].tls.certificates[{j}]"
            try:
                entry = load_certificate(cert)
            except CertificateLoadError as exc:
                problems.append((f"{where}.{exc.part}", str(exc)))
                continue
            chain = [x509.load_der_x509_certificate(der) for der in entry.chain_der]
            warnings += _expiry_warnings(f"{where}.cert", cert.cert, chain, now)
            entries.append((entry, chain[0]))
            leaves[where] = chain[0]
        try:
            build_server_config(lis, config, certificates=[e for e, _ in entries])
        except ServerConfigError as exc:
            for field, message in exc.problems:
                if field == "certificates" and len(entries) < len(lis.tls.certificates):
                    continue  # "at least one": each failed certificate is reported above
                path = _FIELD_PATHS.get(field)
                if path is None:  # a setting the config does not expose: say which
                    path, message = "tls", f"{field}: {message}"
                problems.append((path[1:] if path.startswith("/") else f"listeners[{i}].{path}", message))
        if len(entries) == len(lis.tls.certificates):
            served[i] = entries
    problems += _keyless_problems(config, leaves)
    warnings += _route_warnings(config, served)
    if problems:
        raise ConfigError(problems, warnings)
    return warnings


def _keyless_problems(config: Config, leaves: dict[str, x509.Certificate]) -> list[Problem]:
    """A ``key_ref`` must name a key vcrypto-host will load, and that key must
    be the certificate's: else every handshake on it fails at signing time.
    Checked only when this supervisor runs the host (``vcrypto.manage``): a
    host run on its own reads ``keys_dir`` as another user, and the schema
    already asks for keys_dir when it is managed."""
    vc = config.vcrypto
    refs = [(f"listeners[{i}].tls.certificates[{j}]", cert.key_ref)
            for i, lis in enumerate(config.listeners) if lis.tls.enabled
            for j, cert in enumerate(lis.tls.certificates) if cert.key_ref is not None]
    if not refs or config.crypto.provider != "vcrypto" or not vc.manage or vc.keys_dir is None:
        return []
    try:
        store = KeyStore.load_dir(Path(vc.keys_dir))  # the host's own loader: what it will hold
    except OSError as exc:
        return [("vcrypto.keys_dir", f"{vc.keys_dir}: cannot read: {exc.strerror}")]
    except KeyStoreError as exc:
        return [("vcrypto.keys_dir", str(exc))]
    out = []
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    for where, ref in refs:
        der = store.get(ref)
        if der is None:
            out.append((f"{where}.key_ref", f"no key {ref!r} in {vc.keys_dir} ({ref}.pem or {ref}.der; "
                                            f"it holds: {', '.join(store.names()) or 'none'})"))
            continue
        leaf = leaves.get(where)
        public = serialization.load_der_private_key(der, password=None).public_key()
        if leaf is not None and public.public_bytes(*spki) != leaf.public_key().public_bytes(*spki):
            out.append((f"{where}.key_ref", f"the key {ref!r} in {vc.keys_dir} does not match the certificate"))
    return out


def _expiry_warnings(path: str, file: str, chain: list[x509.Certificate],
                     now: datetime.datetime) -> list[Problem]:
    out = []
    for k, cert in enumerate(chain):
        not_after = cert.not_valid_after_utc
        what = "certificate" if k == 0 else f"chain certificate {k} ({cert.subject.rfc4514_string()})"
        stamp = not_after.strftime("%Y-%m-%d %H:%M:%S UTC")
        if not_after <= now:
            out.append((path, f"{file}: {what} expired: not after {stamp}"))
        elif not_after - now <= datetime.timedelta(days=EXPIRY_WARNING_DAYS):
            days = (not_after - now).total_seconds() / 86400
            out.append((path, f"{file}: {what} expires in {days:.1f} days: not after {stamp}"))
    return out


def _route_warnings(config: Config, served: dict[int, list[tuple[CertificateEntry, x509.Certificate]]]
                    ) -> list[Problem]:
    http = [i for i, lis in enumerate(config.listeners) if lis.mode == "http"]
    if config.routes and not http:
        return [("routes", "no listener is in http mode: routes are never used")]
    never = never_matching(config.routes)
    out = [(f"routes[{i}].host", why) for i, why in never]
    flagged = {i for i, _ in never}
    # A client that verifies the certificate sends a Host the certificate
    # covers; when every http listener is TLS, a route host that none of
    # their certificates covers is reached only by clients that skip
    # verification. (A plaintext http listener can carry any Host.)
    if any(not config.listeners[i].tls.enabled for i in http) or any(i not in served for i in http):
        return out
    names = sorted({n for i in http for entry, _ in served[i] for n in entry.names})
    for i, route in enumerate(config.routes):
        if i in flagged or route.host is None or route.host == "*":
            continue
        if not any(_covers(entry, leaf, route.host.lower()) for k in http for entry, leaf in served[k]):
            out.append((f"routes[{i}].host", f"no certificate of an http listener covers {route.host!r} "
                                             f"(they serve: {', '.join(names) or 'no names'}): only clients "
                                             "that skip certificate verification can reach this route"))
    return out


def _covers(entry: CertificateEntry, leaf: x509.Certificate, pattern: str) -> bool:
    """Whether some host matching route ``pattern`` is a name of ``entry``."""
    try:
        ip = ipaddress.ip_address(pattern)
    except ValueError:
        ip = None
    if ip is not None:  # SNI carries no IP addresses (RFC 6066 §3): the client checks the IP SANs
        try:
            san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            return False
        return ip in san.get_values_for_type(x509.IPAddress)
    if not pattern.startswith("*."):
        return entry.matches(pattern) > 0
    for name in entry.names:
        if name.startswith("*."):  # '*.a.example' serves hosts under a.example: some match '*.example'
            if name[2:] == pattern[2:] or name[2:].endswith(pattern[1:]):
                return True
        elif _host_score(pattern, name) == 2:
            return True
    return False

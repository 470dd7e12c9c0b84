"""Fixtures for tests/tls: certificates made at session start and the provider
matrix.

``tls_provider`` is the seam other providers plug into: add a parameter here
(e.g. "vcrypto") and every interop test runs through it unchanged.
"""
from __future__ import annotations

import pytest

from tests.tls.certs import TestCert, make_cert
from tests.tls.helpers import CERT_KINDS, CountingProvider
from vcproxy.tls import CryptoProvider, InlineProvider

# The engine's fixtures: a real vcrypto-host + vcrypto-engine-backend pair and
# a VcryptoProvider attached to it (tests/engine/engine_daemons.py).
from tests.engine.engine_daemons import engine_stack, vcrypto_tls_provider  # noqa: F401


@pytest.fixture(scope="session")
def test_certs() -> dict[str, TestCert]:
    return {kind: make_cert(kind) for kind in CERT_KINDS}


@pytest.fixture(scope="session")
def ca_file(test_certs, tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    path.write_bytes(test_certs["ecdsa-p256"].ca_pem)  # one root for every kind
    return str(path)


@pytest.fixture(params=["inline", "counting", "vcrypto"])
def tls_provider(request) -> CryptoProvider:
    if request.param == "inline":
        return InlineProvider()
    if request.param == "vcrypto":
        # every interop test again, with its crypto offloaded to real daemons
        return request.getfixturevalue("vcrypto_tls_provider")
    return CountingProvider()


@pytest.fixture(scope="session")
def config_ed25519(test_certs):
    from tests.tls.helpers import server_config

    return server_config([test_certs["ed25519"]])


@pytest.fixture
def config(test_certs):
    """The in-memory stream tests' server: ECDSA P-256, ALPN http/1.1."""
    from tests.tls.helpers import server_config

    return server_config([test_certs["ecdsa-p256"]], alpn_protocols=["http/1.1"])

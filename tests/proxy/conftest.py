"""Proxy test fixtures live in proxy_testkit (importable by the tests, unlike a conftest)."""
from proxy_testkit import certs, ctx, start_proxy, upstream  # noqa: F401

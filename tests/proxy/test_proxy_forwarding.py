"""Trusted hops and the forwarding headers, as pure code."""
from __future__ import annotations

import pytest

from vcproxy.config import Network
from vcproxy.proxy._forwarding import Forwarding, forwarded_node, is_trusted

NETS = (Network.from_yaml("10.0.0.0/8", "x"), Network.from_yaml("2001:db8::/32", "x"))


@pytest.mark.parametrize("host, trusted", [
    ("10.1.2.3", True), ("11.0.0.1", False), ("::ffff:10.0.0.1", True), ("2001:db8::5", True),
    ("2001:db9::5", False), ("fe80::1%eth0", False), ("not-an-ip", False), ("", False),
])
def test_is_trusted(host, trusted):
    assert is_trusted(host, NETS) is trusted
    assert is_trusted(host, ()) is False


HEADERS = [(b"host", b"example.com:8443"), (b"x-forwarded-for", b"1.1.1.1"), (b"x-forwarded-for", b"2.2.2.2"),
           (b"x-forwarded-proto", b"http"), (b"x-forwarded-host", b"front.example"),
           (b"forwarded", b"for=1.1.1.1"), (b"via", b"1.0 cdn")]


def test_untrusted_client_chain_is_replaced():
    f = Forwarding("https", NETS, forwarded=True, via="vc")
    assert f.request_headers(HEADERS, "203.0.113.5") == [
        (b"x-forwarded-for", b"203.0.113.5"), (b"x-forwarded-proto", b"https"),
        (b"x-forwarded-host", b"example.com:8443"),
        (b"forwarded", b'for=203.0.113.5;proto=https;host="example.com:8443"'), (b"via", b"1.0 cdn, 1.1 vc")]


def test_trusted_peer_chain_is_appended_to():
    f = Forwarding("https", NETS, forwarded=True)
    assert f.request_headers(HEADERS, "10.0.0.9") == [
        (b"x-forwarded-for", b"1.1.1.1, 2.2.2.2, 10.0.0.9"), (b"x-forwarded-proto", b"http"),
        (b"x-forwarded-host", b"front.example"),
        (b"forwarded", b'for=1.1.1.1, for=10.0.0.9;proto=https;host="example.com:8443"')]


def test_defaults_send_no_forwarded_or_via_and_drop_untrusted_forwarded():
    out = dict(Forwarding("http").request_headers(HEADERS, "2001:db8::1"))
    assert out == {b"x-forwarded-for": b"2001:db8::1", b"x-forwarded-proto": b"http",
                   b"x-forwarded-host": b"example.com:8443"}


def test_forwarded_nodes():
    assert forwarded_node("192.0.2.60") == b"192.0.2.60"
    assert forwarded_node("2001:db8:cafe::17") == b'"[2001:db8:cafe::17]"'  # RFC 7239 §6 example

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


@pytest.mark.parametrize("value, kept", [
    (b"lb-4f2a", True), (b"a" * 128, True), (b"a" * 129, False), (b"", False), (b"a b", False),
    (b"a,b", False), (b'a"b', False), (b"a\\b", False), ("é".encode(), False),
])
def test_a_request_id_is_kept_only_from_a_trusted_hop_and_only_if_well_formed(value, kept):
    f = Forwarding("https", NETS)
    headers = [(b"host", b"h"), (b"x-request-id", value)]
    assert f.trusted_request_id(headers, "10.0.0.1") == (value.decode("latin-1") if kept else None)
    assert f.trusted_request_id(headers, "203.0.113.5") is None  # anyone else's is replaced
    assert Forwarding("https").trusted_request_id(headers, "10.0.0.1") is None


def test_request_id_echo_replaces_the_upstreams():
    upstream = [(b"content-type", b"text/plain"), (b"x-request-id", b"theirs")]
    assert Forwarding().response_headers(upstream, "ours") is upstream  # echo off: untouched
    echoed = Forwarding(echo_request_id=True).response_headers(upstream, "ours")
    assert echoed == [(b"content-type", b"text/plain"), (b"x-request-id", b"ours")]

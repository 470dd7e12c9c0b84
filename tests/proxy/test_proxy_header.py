"""The PROXY protocol codec (sans-IO): spec examples, whole and byte by byte, round trips, any bytes."""
from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, strategies as st

from vcproxy.proxy._proxy_header import (V2_SIGNATURE, ProxyHeader, ProxyProtocolError, encode_v1, encode_v2,
                                         parse_proxy_header)


def parse_bytewise(data: bytes):
    """Feed growing prefixes as a socket might deliver them: need-more until whole."""
    for i in range(len(data)):
        assert parse_proxy_header(data[:i]) is None, i
    return parse_proxy_header(data)


def test_v1_tcp4_and_the_stream_after_it():
    data = b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n\x16\x03\x01"
    header, used = parse_proxy_header(data)
    assert header == ProxyHeader(1, "proxy", ("192.0.2.1", 56324), ("198.51.100.2", 443))
    assert data[used:] == b"\x16\x03\x01"
    assert parse_bytewise(data[:used]) == (header, used)


def test_v1_tcp6_and_unknown():
    header, _ = parse_proxy_header(b"PROXY TCP6 2001:db8::1 2001:db8:0:0::2 1 65535\r\n")
    assert header.source == ("2001:db8::1", 1) and header.destination == ("2001:db8::2", 65535)
    header, used = parse_proxy_header(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\nrest")
    assert header.source is None and used == len(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n")


@pytest.mark.parametrize("line", [
    b"PROXY TCP4 192.0.2.1 198.51.100.2 56324\r\n",          # a field missing
    b"PROXY TCP4 2001:db8::1 198.51.100.2 1 2\r\n",         # family mismatch
    b"PROXY TCP4 192.0.2.1 198.51.100.2 65536 2\r\n",       # port range
    b"PROXY TCP4 192.0.2.1 198.51.100.2 01 2\r\n",          # leading zero
    b"PROXY TCP5 192.0.2.1 198.51.100.2 1 2\r\n",
    b"PROXY  TCP4 192.0.2.1 198.51.100.2 1 2\r\n",          # two spaces
    b"PROXY TCP4 192.0.2.1 198.51.100.2 1 2\n",             # LF only
    b"GET / HTTP/1.1\r\n",
    b"\x16\x03\x01\x00\xa0",                                # a bare ClientHello
    b"PROXY TCP4 " + b"1" * 200,                            # no CRLF within 107 bytes
])
def test_v1_refusals(line):
    with pytest.raises(ProxyProtocolError):
        parse_proxy_header(line)


def v2(command: int, fam: int, body: bytes) -> bytes:
    return V2_SIGNATURE + bytes([0x20 | command, fam]) + len(body).to_bytes(2, "big") + body


def test_v2_inet_with_tlvs_byte_by_byte():
    body = bytes([192, 0, 2, 1, 198, 51, 100, 2]) + (56324).to_bytes(2, "big") + (443).to_bytes(2, "big")
    tlvs = bytes([0x02, 0, 3]) + b"abc" + bytes([0xEE, 0, 0])
    data = v2(1, 0x11, body + tlvs)
    header, used = parse_bytewise(data)
    assert used == len(data)
    assert header == ProxyHeader(2, "proxy", ("192.0.2.1", 56324), ("198.51.100.2", 443),
                                 ((0x02, b"abc"), (0xEE, b"")))


def test_v2_inet6_local_unspec_unix():
    src, dst = ipaddress.ip_address("2001:db8::7"), ipaddress.ip_address("2001:db8::8")
    header, _ = parse_proxy_header(v2(1, 0x21, src.packed + dst.packed + b"\x00\x50\x01\xbb"))
    assert header.source == ("2001:db8::7", 80) and header.destination == ("2001:db8::8", 443)
    for data in (v2(0, 0x00, b""), v2(0, 0x11, bytes(12)), v2(1, 0x00, b""), v2(1, 0x31, bytes(216))):
        header, used = parse_proxy_header(data)
        assert header.source is None and used == len(data)
    assert parse_proxy_header(v2(0, 0x00, b""))[0].command == "local"


@pytest.mark.parametrize("data", [
    V2_SIGNATURE + bytes([0x11, 0x11, 0, 12]) + bytes(12),   # version 1 in the binary format
    v2(2, 0x11, bytes(12)),                                  # unknown command
    v2(1, 0x41, bytes(12)),                                  # unknown family
    v2(1, 0x11, bytes(11)),                                  # short address block
    v2(1, 0x11, bytes(12) + b"\x01\x00\x05ab"),              # TLV overruns
    v2(1, 0x11, bytes(12) + b"\x01\x00"),                    # truncated TLV
    b"\r\n\r\n\x00\r\nQUIX\n" + bytes(8),                    # signature
])
def test_v2_refusals(data):
    with pytest.raises(ProxyProtocolError):
        parse_proxy_header(data)


addresses = st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)).map(str)
ports = st.integers(0, 65535)


@given(addresses, ports, addresses, ports, st.sampled_from([encode_v1, encode_v2]))
def test_encode_parse_round_trip(src, sport, dst, dport, encode):
    header, used = parse_proxy_header(encode((src, sport), (dst, dport)) + b"tail")
    assert used == len(encode((src, sport), (dst, dport)))
    a, b = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    if a.version != b.version:  # mapped into IPv6 together
        a, b = (ipaddress.ip_address(f"::ffff:{x}") if x.version == 4 else x for x in (a, b))
    assert header.source == (a.compressed, sport) and header.destination == (b.compressed, dport)


@given(st.binary(max_size=300))
def test_any_bytes_are_a_header_need_more_or_refused(data):
    try:
        out = parse_proxy_header(data)
    except ProxyProtocolError:
        return
    if out is not None:
        header, used = out
        assert 0 < used <= len(data) and header.version in (1, 2)


@given(st.sampled_from([b"PROXY ", V2_SIGNATURE]), st.binary(max_size=300))
def test_any_bytes_after_a_signature(prefix, rest):
    test_any_bytes_are_a_header_need_more_or_refused.hypothesis.inner_test(prefix + rest)

"""The request-line checks, as pure code (the e2e tests drive them through TLS)."""
from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from vcproxy.proxy._requestline import RequestLineError, RequestTarget, check_request_line


def status_of(method: bytes, target: bytes, version: bytes = b"1.1", host: bytes = b"h") -> int:
    with pytest.raises(RequestLineError) as info:
        check_request_line(method, target, version, host)
    return info.value.status


def test_origin_form_passes_with_the_host_header():
    assert check_request_line(b"GET", b"/a/b?q=1", b"1.1", b"Example.com") == RequestTarget(
        b"Example.com", "/a/b", b"/a/b?q=1")
    assert check_request_line(b"GET", b"/", b"1.0", b"").path == "/"


@pytest.mark.parametrize("version", [b"0.9", b"2.0", b"3.7", b"1.2", b"9.9"])
def test_versions_other_than_1x_are_505(version):
    assert status_of(b"GET", b"/", version) == 505


def test_prior_knowledge_preface_is_400_not_505():
    assert status_of(b"PRI", b"*", b"2.0") == 400


def test_connect_is_405_and_says_what_is_allowed():
    with pytest.raises(RequestLineError) as info:
        check_request_line(b"CONNECT", b"example.com:443", b"1.1", b"example.com:443")
    assert info.value.status == 405 and dict(info.value.headers)[b"allow"].startswith(b"GET, ")


def test_asterisk_form():
    assert check_request_line(b"OPTIONS", b"*", b"1.1", b"h").target == b"*"
    assert status_of(b"GET", b"*") == 400


@pytest.mark.parametrize("target, authority, path, forwarded", [
    (b"http://a.example/x?y#frag", b"a.example", "/x", b"/x?y"),
    (b"HTTPS://a.example:8443", b"a.example:8443", "/", b"/"),
    (b"http://a.example?q", b"a.example", "/", b"/?q"),
    (b"http://[::1]:80/p", b"[::1]:80", "/p", b"/p"),
])
def test_absolute_form_names_the_authority(target, authority, path, forwarded):
    assert check_request_line(b"GET", target, b"1.1", b"ignored") == RequestTarget(authority, path, forwarded, True)


@pytest.mark.parametrize("target", [b"ftp://a/x", b"http:///x", b"http://u:p@a/x", b"a.example/x", b"x"])
def test_bad_targets_are_400(target):
    assert status_of(b"GET", target) == 400


@given(st.binary(max_size=20), st.binary(max_size=40), st.binary(max_size=4), st.binary(max_size=10))
def test_any_line_passes_or_gets_a_status(method, target, version, host):
    try:
        out = check_request_line(method, target, version, host)
    except RequestLineError as exc:
        assert exc.status in (400, 405, 505)
    else:
        assert out.target.startswith(b"/") or out.target == b"*"

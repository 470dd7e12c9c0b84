"""Record layer pieces: inner plaintext, nonces, framing."""
from __future__ import annotations

import pytest

from vcproxy.tls import _record as r
from vcproxy.tls._errors import RecordOverflow, UnexpectedMessage
from vcproxy.tls._keyschedule import SUITES


def test_split_inner_with_and_without_padding():
    assert r.split_inner(b"data\x17") == (23, b"data")
    assert r.split_inner(b"data\x16\x00\x00\x00") == (22, b"data")
    assert r.split_inner(b"\x15") == (21, b"")
    with pytest.raises(UnexpectedMessage):
        r.split_inner(b"\x00" * 10)
    with pytest.raises(UnexpectedMessage):
        r.split_inner(b"")
    with pytest.raises(RecordOverflow):
        r.split_inner(b"x" * (r.MAX_PLAINTEXT + 1) + b"\x17")
    with pytest.raises(RecordOverflow):
        r.split_inner(b"x" * (r.MAX_PLAINTEXT + 1) + b"\x17\x00")
    # RFC 8446 §5.4: padding counts: the whole TLSInnerPlaintext is <= 2^14 + 1
    assert r.split_inner(b"x\x16" + bytes(r.MAX_PLAINTEXT - 1)) == (22, b"x")
    with pytest.raises(RecordOverflow):
        r.split_inner(b"x\x16" + bytes(r.MAX_PLAINTEXT))


def test_nonce_is_iv_xor_sequence_number():
    p = r.Protection(SUITES["TLS_AES_128_GCM_SHA256"], b"s" * 32, None, bytes(11) + b"\x01")
    assert p.nonce(0) == bytes(11) + b"\x01"
    assert p.nonce(3) == bytes(11) + b"\x02"
    nonce, aad, inner = p.seal_item(r.APPLICATION_DATA, b"abc")
    assert (nonce, aad, inner) == (bytes(11) + b"\x01", b"\x17\x03\x03\x00\x14", b"abc\x17")
    assert p.seq == 1


def test_splitter_waits_for_whole_records():
    s = r.RecordSplitter()
    s.feed(b"\x17\x03\x03\x00\x03ab")
    assert s.next_record() is None
    s.feed(b"c\x16")
    assert s.next_record() == (23, b"\x17\x03\x03\x00\x03", b"abc")
    assert s.next_record() is None and s.buffered == 1

"""Hypothesis: any bytes into the record and handshake parsers give parsed data,
need-more-data, or a typed TLSError carrying an alert — nothing else."""
from __future__ import annotations

import trio
import trio.testing
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.tls import rfc8448
from tests.tls.miniclient import client_hello, ext
from tests.tls.miniclient12 import client_hello12
from vcproxy.tls import AlertDescription, InlineProvider, TLSError, TLSStream
from vcproxy.tls import _codec as c
from vcproxy.tls import _codec12 as c12
from vcproxy.tls._handshake import Epoch, ServerHandshake
from vcproxy.tls._record import RecordSplitter

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SHARE = bytes(range(32))
VALID_HELLOS = [
    rfc8448.CLIENT_HELLO,
    client_hello(share=SHARE, alpn=[b"h2", b"http/1.1"], session_id=b"s" * 32,
                 extra=ext(c.EXT_RECORD_SIZE_LIMIT, b"\x40\x01")),
    # TLS 1.2: EMS, renegotiation_info, an empty session ticket, point formats
    client_hello12(random=bytes(range(32)), ticket=b"", suites=(0xC02B, 0xCCA9, 0x00FF),
                   extra=ext(c12.EXT_EC_POINT_FORMATS, b"\x01\x00")),
]


def _records(chunks) -> list | TLSError:
    splitter = RecordSplitter()
    out = []
    try:
        for chunk in chunks:
            splitter.feed(chunk)
            while (rec := splitter.next_record()) is not None:
                out.append(rec)
    except TLSError as exc:
        assert isinstance(exc.alert, AlertDescription)
        return out + [type(exc)]
    return out


@FUZZ
@given(st.binary(max_size=600))
@example(b"\x16\x03\x01\x48\x01")                 # oversized length
@example(b"\x16\x03\x01\x00\x05\x01\x00")          # truncated
def test_record_splitter_whole_and_byte_by_byte(data):
    whole = _records([data])
    byte_by_byte = _records([data[i:i + 1] for i in range(len(data))])
    assert whole == byte_by_byte


def _parse_messages(chunks, max_bytes=4096):
    re = c.HandshakeReassembler(max_bytes)
    parsed = []
    try:
        for chunk in chunks:
            for msg in re.feed(chunk):
                if msg[0] == c.CLIENT_HELLO:
                    ch = c.parse_client_hello(msg)
                    assert ch.serialize() == msg  # round trip of anything accepted
                    parsed.append(ch.random)
                else:
                    parsed.append(msg)
    except TLSError as exc:
        assert isinstance(exc.alert, AlertDescription)
        parsed.append(type(exc))
    return parsed


def _mutate(data: bytes, edits) -> bytes:
    buf = bytearray(data)
    for pos, value in edits:
        if buf:
            buf[pos % len(buf)] = value
    return bytes(buf)


@FUZZ
@given(st.sampled_from(VALID_HELLOS),
       st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=4),
       st.integers(0, 400), st.binary(max_size=40))
@example(VALID_HELLOS[1], [], 0, b"")
def test_handshake_parser_on_mutated_hellos(hello, edits, cut, tail):
    data = _mutate(hello, edits)
    data = data[:len(data) - cut] + tail if cut else data + tail
    _same_outcome(data)


def _same_outcome(data):
    # Fed whole, a bad header of a later message may be seen before an earlier
    # message is parsed; byte by byte parses the earlier one first. Either way
    # the outcome is the same kind: all parsed, or a typed error.
    whole = _parse_messages([data])
    byte_by_byte = _parse_messages([data[i:i + 1] for i in range(len(data))])
    whole_failed = bool(whole) and isinstance(whole[-1], type)
    bytewise_failed = bool(byte_by_byte) and isinstance(byte_by_byte[-1], type)
    assert whole_failed == bytewise_failed
    if not whole_failed:
        assert whole == byte_by_byte


@FUZZ
@given(st.binary(max_size=400))
def test_handshake_parser_on_arbitrary_bytes(data):
    _same_outcome(data)


def test_duplicate_extension_and_bad_lengths_are_typed():
    dup = client_hello(share=SHARE, extra=ext(0, c.vec16(b"\x00" + c.vec16(b"x"))))
    assert _parse_messages([dup]) == [c.IllegalParameter]
    trailing = bytearray(VALID_HELLOS[1] + b"\x00")
    trailing[1:4] = (len(trailing) - 4).to_bytes(3, "big")
    assert _parse_messages([bytes(trailing)]) == [c.DecodeError]
    oversized = b"\x01\x01\x00\x00"
    assert _parse_messages([oversized]) == [c.IllegalParameter]


@FUZZ
@given(st.sampled_from(VALID_HELLOS),
       st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=3))
def test_state_machine_on_mutated_hellos(config_ed25519, hello, edits):
    """Whole ServerHandshake: commands out, or a TLSError — nothing else."""
    data = _mutate(hello, edits)
    hs = ServerHandshake(config_ed25519, random_bytes=lambda n: bytes(n), now_s=lambda: 0.0)
    try:
        for msg in c.HandshakeReassembler(1 << 16).feed(data):
            hs.receive_message(Epoch.INITIAL, msg)
    except TLSError as exc:
        assert isinstance(exc.alert, AlertDescription)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300), st.booleans())
@example(b"\x16\x03\x01\x00\x04\x01\x00\x00\x00", False)
def test_tls_stream_on_arbitrary_input(config_ed25519, data, byte_by_byte):
    """Any input to a server stream ends in a TLSError or a closed transport."""
    async def main():
        a, b = trio.testing.memory_stream_pair()
        server = TLSStream(a, config_ed25519, InlineProvider())

        async def feed():
            chunks = [data[i:i + 1] for i in range(len(data))] if byte_by_byte else [data]
            for chunk in chunks:
                if chunk:
                    await b.send_all(chunk)
            await b.send_eof()
            while await b.receive_some():
                pass

        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(feed)
                try:
                    await server.do_handshake()
                except (TLSError, trio.BrokenResourceError):
                    pass
                else:
                    raise AssertionError("handshake completed on random bytes")
                finally:
                    await server.aclose()
    trio.run(main)


def test_client_hello_cut_at_every_length_is_typed():
    # The fixed fields are parsed by direct indexing: every cut (header length
    # fixed up) must be a typed decode error, or a hello that ends cleanly
    # right after its compression methods (no extensions: parsed).
    for hello in VALID_HELLOS:
        body = hello[4:]
        sid_len = body[34]
        suites_end = 35 + sid_len + 2 + int.from_bytes(body[35 + sid_len:37 + sid_len], "big")
        no_ext_len = suites_end + 1 + body[suites_end]
        for cut in range(len(body)):
            msg = c.handshake(c.CLIENT_HELLO, body[:cut])
            if cut == no_ext_len:
                assert c.parse_client_hello(msg).extensions == []
                continue
            try:
                c.parse_client_hello(msg)
            except TLSError as exc:
                assert isinstance(exc.alert, AlertDescription)
            else:
                raise AssertionError(f"cut at {cut} of {len(body)} parsed")
        assert c.parse_client_hello(hello).serialize() == hello

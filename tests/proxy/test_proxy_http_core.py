"""The HTTP proxy core over in-memory client streams and a real loopback upstream.

No TLS and no processes here: the core takes any trio Stream, so these tests
drive ``HttpProxyConnection`` directly, byte for byte, and check what the
client and the upstream see.
"""
from __future__ import annotations

import hashlib
import json

import h11
import pytest
import trio
import trio.testing
import yaml

from vcproxy.config import parse_config
from vcproxy.proxy import ConnState, HttpProxyConnection, HttpRuntime, Router, UpstreamPool
from vcproxy.proxy import demo_upstream
from proxy_testkit import closed_port


class Recorder:
    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.upstream_errors: list[tuple[str, str]] = []

    def request_done(self, record, seconds):
        self.requests.append(record)

    def upstream_error(self, upstream, kind):
        self.upstream_errors.append((upstream, kind))


def make_runtime(upstreams: dict, routes: list, **limits) -> HttpRuntime:
    config = parse_config(yaml.safe_dump({
        "listeners": [{"port": 1, "tls": {"enabled": False}}],
        "upstreams": upstreams, "routes": routes, "limits": limits,
    }))
    pools = {name: UpstreamPool(name, up) for name, up in config.upstreams.items()}
    return HttpRuntime(config, "test", "https", Router(config.routes), pools)


class Client:
    """An h11 client on one end of a memory stream pair; the proxy serves the other."""

    def __init__(self, stream) -> None:
        self.stream = stream
        self.h11 = h11.Connection(h11.CLIENT)

    async def send_raw(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def request(self, method: str, target: str, body: bytes | None = None, headers=(), chunks=None):
        hs = [("host", "example.com"), *headers]
        if body is not None:
            hs.append(("content-length", str(len(body))))
        if chunks is not None:
            hs.append(("transfer-encoding", "chunked"))
        await self.stream.send_all(self.h11.send(h11.Request(method=method, target=target, headers=hs)))
        for piece in ([body] if body else []) + list(chunks or []):
            await self.stream.send_all(self.h11.send(h11.Data(data=piece)))
        await self.stream.send_all(self.h11.send(h11.EndOfMessage()))
        return await self.response()

    async def response(self):
        body = bytearray()
        response = None
        while True:
            event = self.h11.next_event()
            if event is h11.NEED_DATA:
                self.h11.receive_data(await self.stream.receive_some(65536))
                continue
            if isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                break
        if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
            self.h11.start_next_cycle()
        return response.status_code, dict(response.headers), bytes(body)


async def wait_until(predicate, timeout_s: float = 5.0) -> None:
    with trio.fail_after(timeout_s):
        while not predicate():
            await trio.sleep(0.005)


async def read_all(stream) -> bytes:
    out = bytearray()
    with trio.fail_after(10):
        while data := await stream.receive_some(65536):
            out += data
    return bytes(out)


@pytest.fixture
async def origin(nursery):
    port = await nursery.start(demo_upstream.serve, "127.0.0.1", 0)
    return f"127.0.0.1:{port}"


async def serve(nursery, runtime, recorder=None, client_host="192.0.2.7"):
    client_end, proxy_end = trio.testing.memory_stream_pair()
    recorder = recorder or Recorder()
    conn = ConnState(client_host, 40000, trio.Event())
    done = trio.Event()

    async def run():
        try:
            await HttpProxyConnection(proxy_end, conn, runtime, recorder).serve()
        finally:
            await proxy_end.aclose()
            done.set()

    nursery.start_soon(run)
    return Client(client_end), recorder, conn, done


async def test_forwarding_headers_and_keepalive(nursery, origin):
    rt = make_runtime({"o": {"servers": [origin]}}, [{"upstream": "o"}])
    client, rec, _, _ = await serve(nursery, rt)
    status, headers, body = await client.request("GET", "/headers", headers=[
        ("x-forwarded-for", "198.51.100.1"), ("connection", "keep-alive, x-private"), ("x-private", "secret"),
        ("keep-alive", "timeout=5"), ("te", "trailers"), ("proxy-authorization", "Basic Zm9v"), ("x-kept", "yes")])
    assert status == 200
    seen = dict((k, v) for k, v in json.loads(body)["headers"])
    assert seen["x-forwarded-for"] == "192.0.2.7"  # the client is no trusted proxy: its claim is replaced
    assert seen["x-forwarded-proto"] == "https"
    assert seen["x-forwarded-host"] == "example.com"
    assert seen["host"] == "example.com"
    assert seen["x-kept"] == "yes"
    for hop in ("connection", "x-private", "keep-alive", "te", "proxy-authorization"):
        assert hop not in seen
    # keep-alive on both sides: same client connection, pooled upstream connection
    for _ in range(3):
        status, _, body = await client.request("GET", "/")
        assert status == 200 and body.startswith(b"hello")
    await wait_until(lambda: len(rec.requests) == 4)
    assert [r["status"] for r in rec.requests] == [200] * 4
    addrs = {r["upstream_addr"] for r in rec.requests}
    assert addrs == {origin}


async def test_upstream_connections_are_reused(nursery):
    """Count TCP connections at a counting origin: keep-alive means one for many requests."""
    accepted = []

    async def counting_origin(stream):
        accepted.append(stream)
        await demo_upstream.serve_connection(stream)

    listeners = await nursery.start(trio.serve_tcp, counting_origin, 0)
    port = listeners[0].socket.getsockname()[1]
    rt = make_runtime({"o": {"servers": [f"127.0.0.1:{port}"]}}, [{"upstream": "o"}])
    client, _, _, _ = await serve(nursery, rt)
    for _ in range(5):
        assert (await client.request("GET", "/"))[0] == 200
    assert len(accepted) == 1


async def test_routing_by_host_and_prefix(nursery):
    ports = [await nursery.start(demo_upstream.serve, "127.0.0.1", 0) for _ in range(3)]
    rt = make_runtime(
        {"default": {"servers": [f"127.0.0.1:{ports[0]}"]}, "api": {"servers": [f"127.0.0.1:{ports[1]}"]},
         "wild": {"servers": [f"127.0.0.1:{ports[2]}"]}},
        [{"upstream": "default"}, {"upstream": "api", "path_prefix": "/api"},
         {"upstream": "wild", "host": "*.example.org"}, {"upstream": "api", "host": "api.example.org",
                                                         "path_prefix": "/"}])
    client, rec, _, _ = await serve(nursery, rt)
    cases = [("example.com", "/x", "default"), ("example.com", "/api/v1", "api"), ("example.com", "/apix", "default"),
             ("a.example.org:8443", "/", "wild"), ("api.example.org", "/", "api"), ("EXAMPLE.com", "/api?q=1", "api")]
    for host, path, expected in cases:
        client.h11 = h11.Connection(h11.CLIENT) if client.h11.our_state is not h11.IDLE else client.h11
        await client.stream.send_all(client.h11.send(h11.Request(method="GET", target=path, headers=[("host", host)])))
        await client.stream.send_all(client.h11.send(h11.EndOfMessage()))
        status, _, _ = await client.response()
        assert status in (200, 404)  # the demo origin has no /x or /api
        await wait_until(lambda: len(rec.requests) == cases.index((host, path, expected)) + 1)
        assert rec.requests[-1]["upstream"] == expected, (host, path)


async def test_no_route_is_404(nursery, origin):
    rt = make_runtime({"o": {"servers": [origin]}}, [{"upstream": "o", "host": "only.example"}])
    client, rec, _, _ = await serve(nursery, rt)
    status, _, _ = await client.request("GET", "/")
    assert status == 404


@pytest.mark.parametrize("raw,status", [
    (b"GARBAGE\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nhost: a\r\ncontent-length: x\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\n\r\n", 400),  # HTTP/1.1 without Host (RFC 9112 3.2)
    (b"GET / HTTP/1.1\r\nhost: a\r\nbad header\r\n\r\n", 400),
])
async def test_malformed_request_is_400(nursery, origin, raw, status):
    rt = make_runtime({"o": {"servers": [origin]}}, [{"upstream": "o"}])
    client, rec, _, done = await serve(nursery, rt)
    await client.send_raw(raw)
    reply = await read_all(client.stream)
    assert reply.startswith(f"HTTP/1.1 {status} ".encode())
    assert rec.requests[-1]["status"] == status


async def test_oversized_head_is_431(nursery, origin):
    rt = make_runtime({"o": {"servers": [origin]}}, [{"upstream": "o"}], max_header_bytes=4096)
    client, rec, _, _ = await serve(nursery, rt)
    await client.send_raw(b"GET / HTTP/1.1\r\nhost: a\r\nx-big: " + b"a" * 8000 + b"\r\n\r\n")
    assert (await read_all(client.stream)).startswith(b"HTTP/1.1 431 ")


async def test_body_over_limit_is_413_by_length_and_by_chunks(nursery, origin):
    rt = make_runtime({"o": {"servers": [origin]}}, [{"upstream": "o"}], max_body_bytes=1000)
    client, rec, _, _ = await serve(nursery, rt)
    await client.send_raw(b"POST /upload HTTP/1.1\r\nhost: a\r\ncontent-length: 1001\r\n\r\n")
    assert (await read_all(client.stream)).startswith(b"HTTP/1.1 413 ")
    client, rec, _, _ = await serve(nursery, rt)
    status, _, _ = await client.request("POST", "/upload", chunks=[b"x" * 600, b"y" * 600])
    assert status == 413
    # within the limit, chunked bodies stream through
    client, _, _, _ = await serve(nursery, rt)
    status, _, body = await client.request("POST", "/upload", chunks=[b"x" * 400, b"y" * 400])
    assert status == 200 and json.loads(body)["bytes"] == 800


async def test_connect_failure_is_502(nursery):
    rt = make_runtime({"o": {"servers": [f"127.0.0.1:{closed_port()}"], "retries": 0}}, [{"upstream": "o"}])
    client, rec, _, _ = await serve(nursery, rt)
    status, _, _ = await client.request("GET", "/")
    assert status == 502
    assert rec.upstream_errors == [("o", "connect")]


async def test_retry_goes_to_the_next_server(nursery, origin):
    rt = make_runtime({"o": {"servers": [f"127.0.0.1:{closed_port()}", origin], "retries": 1}}, [{"upstream": "o"}])
    for _ in range(2):  # round-robin starts at each server once
        client, rec, _, _ = await serve(nursery, rt)
        assert (await client.request("GET", "/"))[0] == 200


async def test_upstream_timeout_is_504(nursery, origin):
    rt = make_runtime({"o": {"servers": [origin], "read_timeout_s": 0.3}}, [{"upstream": "o"}])
    client, rec, _, _ = await serve(nursery, rt)
    status, _, _ = await client.request("GET", "/slow?s=3")
    assert status == 504
    assert rec.upstream_errors == [("o", "timeout")]


async def test_upstream_closing_without_response_is_502(nursery):
    async def rude(stream):
        await stream.receive_some(65536)
        await stream.aclose()

    listeners = await nursery.start(trio.serve_tcp, rude, 0)
    port = listeners[0].socket.getsockname()[1]
    rt = make_runtime({"o": {"servers": [f"127.0.0.1:{port}"]}}, [{"upstream": "o"}])
    client, rec, _, _ = await serve(nursery, rt)
    assert (await client.request("GET", "/"))[0] == 502


async def test_streamed_bodies_match(nursery, origin):
    rt = make_runtime({"o": {"servers": [origin]}}, [{"upstream": "o"}])
    client, _, _, _ = await serve(nursery, rt)
    payload = bytes(range(256)) * 4000
    status, _, body = await client.request("POST", "/upload", body=payload)
    assert json.loads(body) == {"bytes": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}
    status, headers, body = await client.request("POST", "/echo", chunks=[payload[:1000], payload[1000:]])
    assert body == payload
    for chunked in ("0", "1"):
        status, headers, body = await client.request("GET", f"/bytes?n=300001&seed=3&chunked={chunked}")
        assert hashlib.sha256(body).hexdigest() == demo_upstream.expected_sha256(300001, 3)


async def test_idle_keepalive_connection_is_closed(nursery, origin):
    rt = make_runtime({"o": {"servers": [origin]}}, [{"upstream": "o"}], idle_timeout_s=0.3)
    client, _, _, done = await serve(nursery, rt)
    assert (await client.request("GET", "/"))[0] == 200
    with trio.fail_after(5):
        await done.wait()


async def test_slow_header_is_cut_off(nursery, origin):
    rt = make_runtime({"o": {"servers": [origin]}}, [{"upstream": "o"}], header_timeout_s=0.3)
    client, _, _, done = await serve(nursery, rt)
    await client.send_raw(b"GET / HT")
    with trio.fail_after(5):
        await done.wait()


async def test_expect_100_continue(nursery, origin):
    rt = make_runtime({"o": {"servers": [origin]}}, [{"upstream": "o"}])
    client, _, _, _ = await serve(nursery, rt)
    await client.send_raw(b"POST /upload HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\nexpect: 100-continue\r\n\r\n")
    with trio.fail_after(5):
        first = await client.stream.receive_some(65536)
    assert first.startswith(b"HTTP/1.1 100 ")
    await client.send_raw(b"hello")
    rest = b""
    digest = hashlib.sha256(b"hello").hexdigest().encode()
    with trio.fail_after(5):
        while digest not in rest:
            rest += await client.stream.receive_some(65536)
    assert b" 200 " in rest


async def test_drain_closes_idle_and_marks_last_response(nursery, origin):
    rt = make_runtime({"o": {"servers": [origin]}}, [{"upstream": "o"}])
    client, _, conn, done = await serve(nursery, rt)
    assert (await client.request("GET", "/"))[0] == 200
    # a request in flight when the drain starts completes, with Connection: close
    await client.stream.send_all(client.h11.send(h11.Request(method="GET", target="/slow?s=0.3",
                                                             headers=[("host", "a")])))
    await client.stream.send_all(client.h11.send(h11.EndOfMessage()))
    await trio.sleep(0.1)
    conn.draining.set()
    status, headers, body = await client.response()
    assert status == 200 and body == b"slow\n" and headers[b"connection"] == b"close"
    with trio.fail_after(5):
        await done.wait()


async def test_http10_client_without_host(nursery, origin):
    rt = make_runtime({"o": {"servers": [origin]}}, [{"upstream": "o"}])
    client, _, _, done = await serve(nursery, rt)
    await client.send_raw(b"GET /headers HTTP/1.0\r\n\r\n")
    reply = await read_all(client.stream)  # HTTP/1.0 without keep-alive: closed after the response
    assert reply.startswith(b"HTTP/1.1 200 ")
    seen = dict(json.loads(reply.partition(b"\r\n\r\n")[2])["headers"])
    assert seen["host"] == origin


async def test_health_checks_steer_away_from_a_dead_server(nursery, origin):
    dead = f"127.0.0.1:{closed_port()}"
    rt = make_runtime({"o": {"servers": [dead, origin], "retries": 0, "max_idle_connections": 0, "health_check": {
        "enabled": True, "interval_s": 0.05, "timeout_s": 0.5, "path": "/health", "unhealthy_after": 1}}},
        [{"upstream": "o"}])
    pool = rt.pools["o"]
    nursery.start_soon(pool.run_health_checks)
    await wait_until(lambda: [str(a) for a in pool.healthy_servers()] == [origin])
    client, rec, _, _ = await serve(nursery, rt)
    for _ in range(4):  # no retries, no reuse: round-robin alone would send every other one to the dead server
        assert (await client.request("GET", "/health"))[0] == 200
    await pool.aclose()


class WriteLog(trio.abc.Stream):
    """The proxy's end of the client stream, logging each ``send_all``; with
    ``cork=True`` it also offers ``write`` (as ``TLSStream`` does) and sends
    what was corked when closed."""

    def __init__(self, inner, cork: bool) -> None:
        self.inner = inner
        self.sends: list[bytes] = []
        self.corked = bytearray()
        self.sent_at_close = b""
        if cork:
            self.write = self.corked.extend

    async def send_all(self, data) -> None:
        self.sends.append(bytes(data))
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes=None) -> bytes:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        self.sent_at_close = bytes(self.corked)
        if self.corked:
            await self.inner.send_all(self.sent_at_close)
        await self.inner.aclose()


async def one_write_origin(nursery, body: bytes, close_mid_body: bool = False) -> str:
    """An upstream that answers each request with ONE send_all (head + body),
    or with the head and half the body, then closes."""
    async def handler(stream):
        conn = h11.Connection(h11.SERVER)
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(65536)
                if not data:
                    return
                conn.receive_data(data)
                continue
            if isinstance(event, h11.EndOfMessage):
                head = conn.send(h11.Response(status_code=200, headers=[("content-length", str(len(body)))]))
                if close_mid_body:
                    await stream.send_all(head + body[:len(body) // 2])
                    await stream.aclose()
                    return
                await stream.send_all(head + conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage()))
                conn.start_next_cycle()
            elif isinstance(event, h11.ConnectionClosed):
                return

    listeners = await nursery.start(trio.serve_tcp, handler, 0)
    return f"127.0.0.1:{listeners[0].socket.getsockname()[1]}"


async def serve_logged(nursery, runtime, cork: bool):
    client_end, proxy_end = trio.testing.memory_stream_pair()
    logged = WriteLog(proxy_end, cork)
    done = trio.Event()

    async def run():
        try:
            await HttpProxyConnection(logged, ConnState("192.0.2.7", 40000, trio.Event()), runtime,
                                      Recorder()).serve()
        finally:
            await logged.aclose()
            done.set()

    nursery.start_soon(run)
    return Client(client_end), logged, done


async def test_small_response_leaves_in_one_write(nursery):
    body = b"x" * 300
    rt = make_runtime({"o": {"servers": [await one_write_origin(nursery, body)]}}, [{"upstream": "o"}])
    client, logged, _ = await serve_logged(nursery, rt, cork=False)
    for _ in range(3):
        logged.sends.clear()
        status, _, got = await client.request("GET", "/")
        assert (status, got) == (200, body)
        # head, body and end together: one record, one syscall, one peer wake-up
        assert len(logged.sends) == 1 and logged.sends[0].endswith(body)


async def test_last_response_is_corked_into_the_close(nursery):
    body = b"y" * 300
    rt = make_runtime({"o": {"servers": [await one_write_origin(nursery, body)]}}, [{"upstream": "o"}])
    client, logged, done = await serve_logged(nursery, rt, cork=True)
    status, _, got = await client.request("GET", "/")  # keep-alive: sent at once
    assert (status, got) == (200, body) and len(logged.sends) == 1
    logged.sends.clear()
    status, headers, got = await client.request("GET", "/", headers=[("connection", "close")])
    assert (status, got) == (200, body)
    with trio.fail_after(10):
        await done.wait()
    # the last response went out with the close (TLS: with its close_notify)
    assert logged.sends == [] and logged.sent_at_close.endswith(body)
    assert await read_all(client.stream) == b""


async def test_large_last_response_is_not_corked(nursery):
    from vcproxy.proxy._http import CORK_LAST_RESPONSE_MAX_BYTES

    body = b"z" * 200_000  # far over the cork limit: it goes out before the close
    rt = make_runtime({"o": {"servers": [await one_write_origin(nursery, body)]}}, [{"upstream": "o"}])
    client, logged, done = await serve_logged(nursery, rt, cork=True)
    status, _, got = await client.request("GET", "/", headers=[("connection", "close")])
    assert (status, got) == (200, body)
    with trio.fail_after(10):
        await done.wait()
    # (the upstream's bytes may arrive in several reads: only the tail after
    # the last one may ride with the close, and never more than the limit)
    assert len(logged.sent_at_close) <= CORK_LAST_RESPONSE_MAX_BYTES
    assert sum(map(len, logged.sends)) >= len(body) - CORK_LAST_RESPONSE_MAX_BYTES
    assert (b"".join(logged.sends) + logged.sent_at_close).endswith(body)


async def test_upstream_dying_mid_body_relays_what_came_then_closes(nursery):
    body = b"w" * 1000
    origin = await one_write_origin(nursery, body, close_mid_body=True)
    rt = make_runtime({"o": {"servers": [origin]}}, [{"upstream": "o"}])
    client, logged, done = await serve_logged(nursery, rt, cork=True)
    await client.send_raw(b"GET / HTTP/1.1\r\nhost: example.com\r\n\r\n")
    got = await read_all(client.stream)
    # the head and the half body that arrived were relayed; the close cuts it short
    assert got.startswith(b"HTTP/1.1 200 ") and got.endswith(body[:500])
    with trio.fail_after(10):
        await done.wait()


async def test_counting_stream_adds_bytes_in_steps_and_at_close():
    from vcproxy.proxy._listener import CountingStream

    class Total:
        def __init__(self):
            self.value, self.incs = 0, 0

        def inc(self, n):
            self.value, self.incs = self.value + n, self.incs + 1

    a, b = trio.testing.memory_stream_pair()
    got, sent = Total(), Total()
    counting = CountingStream(a, got, sent)
    for _ in range(100):                              # 100 x 1000 B each way
        await counting.send_all(b"s" * 1000)
        await b.receive_some(65536)
        await b.send_all(b"r" * 1000)
        assert len(await counting.receive_some(65536)) == 1000
    # one metrics-file write per 64 KiB, not per call; the rest when it closes
    assert (sent.value, sent.incs) == (66_000, 1) and (got.value, got.incs) == (66_000, 1)
    await counting.aclose()
    assert sent.value == got.value == 100_000 and sent.incs == got.incs == 2

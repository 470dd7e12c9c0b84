"""End to end: connection slots under slow clients. When every slot of
``limits.max_connections`` is taken, connections that never finish their
handshake (a half-sent ClientHello flood), then idle keep-alive ones, are
shed for new clients; the shed count is exported and logged.

``max_connections`` is small here (the same mechanism as with the defaults,
at a count this test can exhaust in a second); bench/handshake_flood.py
runs 10,000 such clients against `make run`'s defaults.
"""
from __future__ import annotations

import http.client
import re
import resource
import ssl
import time
from pathlib import Path

import pytest

from proxy_testkit import (Flood, Proxy, base_config, raise_nofile, running_proxy, scrape, timed_request, total,
                           worker_pids)

SLOTS = 50


@pytest.fixture(scope="module")
def crowded(tmp_path_factory, certs, upstream):
    config = base_config(upstream.address, certs["a"], workers=1, limits={"max_connections": SLOTS})
    with running_proxy(tmp_path_factory.mktemp("crowded"), config) as p:
        yield p


def wait_for(condition, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def active(proxy) -> float:
    return total(scrape(proxy.metrics_url), "vcproxy_connections_active")


def shed(proxy, phase: str) -> float:
    return total(scrape(proxy.metrics_url), "vcproxy_connections_shed_total", phase=phase)


def test_half_sent_client_hellos_are_shed_for_a_new_client(crowded, ctx):
    """A flood of 4x the slots in half-sent ClientHellos, kept up as they are
    closed (handshake_timeout_s is the default 10 s): a new client is still
    served within 1 s, every time."""
    raise_nofile(4 * SLOTS + 256)
    flood = Flood(crowded.port, 4 * SLOTS)
    try:
        crowded.wait_event("shedding_started")
        waits = [timed_request(crowded.port, ctx) for _ in range(5)]
        assert max(waits) < 1.0, waits
        assert shed(crowded, "handshake") >= 4 * SLOTS - SLOTS
    finally:
        flood.stop()
    crowded.wait_event("shedding_stopped")
    event = crowded.wait_event("shedding_started")
    assert event["max_connections"] == SLOTS


def test_idle_keepalive_connections_are_shed_when_nothing_else_is(crowded, ctx):
    before = shed(crowded, "idle")
    wait_for(lambda: active(crowded) == 0)
    idle = []
    try:
        for _ in range(SLOTS):  # every slot: a keep-alive connection after one request
            conn = http.client.HTTPSConnection("127.0.0.1", crowded.port, context=ctx, timeout=30)
            conn.request("GET", "/health")
            assert conn.getresponse().read() == b"ok\n"
            idle.append(conn)
        assert timed_request(crowded.port, ctx) < 1.0  # limits.idle_timeout_s is 60 s
        assert shed(crowded, "idle") > before
    finally:
        for conn in idle:
            conn.close()


FLOOD_CLIENTS = 10_000


def test_ten_thousand_half_hellos_with_the_default_limits(tmp_path, certs, upstream, ctx):
    """`make run`'s shape (2 workers, vcrypto, default limits): 10,000 clients
    holding half-sent ClientHellos fit in the default slots, and a new client
    is served within 1 s; the shed count is exported (0: nothing was shed). The proxy starts with a low open-files soft limit
    (1024): its workers raise their own to fit ``limits.max_connections``."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert hard >= FLOOD_CLIENTS + 1024, f"RLIMIT_NOFILE hard limit {hard} is too low for this test"
    config = base_config(upstream.address, certs["a"], workers=2, crypto={"provider": "vcrypto"})
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
    try:
        proxy = Proxy(tmp_path, config)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        proxy.wait_ready()
        for pid in worker_pids(proxy):
            limits = Path(f"/proc/{pid}/limits").read_text()
            worker_soft = int(re.search(r"Max open files\s+(\d+)", limits).group(1))
            assert worker_soft >= FLOOD_CLIENTS // 2 + 1024
        raise_nofile(FLOOD_CLIENTS + 1024)
        flood = Flood(proxy.port, FLOOD_CLIENTS)
        try:
            wait_for(lambda: active(proxy) >= FLOOD_CLIENTS, timeout_s=60)
            waits = [timed_request(proxy.port, ctx) for _ in range(5)]
            assert max(waits) < 1.0, waits
            # they fit in the default slots: nothing to shed, and the count says so
            samples = scrape(proxy.metrics_url)
            assert samples[("vcproxy_connections_shed_total",
                            frozenset({("listener", "listener0"), ("phase", "handshake")}))] == 0
        finally:
            flood.stop()
    finally:
        proxy.stop()


def test_idle_http2_connections_are_shed_too(crowded, ctx):
    """An HTTP/2 connection with no stream open is idle like a keep-alive
    one: when every slot holds one, they are shed for a new client."""
    from test_proxy_h2 import Client

    before = shed(crowded, "idle")
    wait_for(lambda: active(crowded) == 0)
    idle = []
    try:
        for _ in range(SLOTS):  # every slot: an h2 connection after one stream
            c = Client(crowded.port, ctx)
            assert c.response(c.request())[0] == 200
            idle.append(c)
        assert timed_request(crowded.port, ctx) < 1.0  # limits.idle_timeout_s is 60 s
        assert shed(crowded, "idle") > before
    finally:
        for c in idle:
            c.close()

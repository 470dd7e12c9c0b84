"""The admin protocol's sans-IO core (``vcrypto.admin._protocol``): request
lines fed whole and byte by byte, every refusal typed with its reply kind,
replies round-trip; and the status renderer on documents of both daemons."""
from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vcrypto import admin
from vcrypto.admin._render import duration, render_backend, render_host, table


def feed_bytewise(data: bytes):
    reader = admin.RequestReader()
    for i in range(len(data)):
        req = reader.feed(data[i:i + 1])
        if req is not None:
            return req
    return reader.eof()


@pytest.mark.parametrize("cmd", admin.COMMANDS)
def test_request_whole_and_byte_by_byte(cmd):
    line = admin.encode_request(cmd)
    assert admin.RequestReader().feed(line) == admin.AdminRequest(cmd)
    assert feed_bytewise(line) == admin.AdminRequest(cmd)


def test_last_line_without_newline_is_taken_at_eof():
    reader = admin.RequestReader()
    assert reader.feed(b'{"cmd": "status"}') is None
    assert reader.eof() == admin.AdminRequest("status")


@pytest.mark.parametrize("data, kind", [
    (b"not json\n", "bad_json"),
    (b"\xff\xfe\n", "bad_json"),
    (b'["status"]\n', "bad_json"),
    (b'{"cmd": "status"}\n{"cmd": "ping"}\n', "bad_json"),   # one request per connection
    (b'{"cmd": "reboot"}\n', "bad_request"),
    (b'{"cmd": 1}\n', "bad_request"),
    (b'{}\n', "bad_request"),
    (b'{"cmd": "status", "verbose": true}\n', "bad_request"),
    (b"x" * admin.MAX_REQUEST_BYTES, "too_large"),
    (b'{"cmd": "status"' + b" " * admin.MAX_REQUEST_BYTES + b"}\n", "too_large"),
])
def test_refusals_carry_their_reply_kind(data, kind):
    with pytest.raises(admin.AdminProtocolError) as exc:
        admin.RequestReader().feed(data)
    assert exc.value.kind == kind


def test_empty_request_at_eof():
    with pytest.raises(admin.AdminProtocolError) as exc:
        admin.RequestReader().eof()
    assert exc.value.kind == "bad_request"


def test_an_endless_line_is_refused_once_it_passes_the_bound():
    reader = admin.RequestReader()
    for _ in range(admin.MAX_REQUEST_BYTES // 64 - 1):
        assert reader.feed(b"a" * 64) is None
    with pytest.raises(admin.AdminProtocolError, match="too_large"):
        reader.feed(b"a" * 64)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2 * admin.MAX_REQUEST_BYTES))
def test_any_bytes_give_a_request_need_more_or_a_typed_error(data):
    try:
        admin.RequestReader().feed(data)
    except admin.AdminProtocolError as exc:
        assert exc.kind in {"bad_json", "bad_request", "too_large"}


def test_replies_round_trip():
    body = {"daemon": "vcrypto-host", "devices": []}
    reply = admin.decode_reply(admin.encode_reply("status", body))
    assert reply["status"] == body and reply["ok"] is True
    with pytest.raises(admin.AdminProtocolError) as exc:
        admin.decode_reply(admin.encode_error("busy", "too many"))
    assert (exc.value.kind, exc.value.detail) == ("busy", "too many")
    for bad in (b"", b"{", json.dumps({"v": 99, "ok": True}).encode()):
        with pytest.raises(admin.AdminProtocolError, match="bad_reply"):
            admin.decode_reply(bad)


def test_admin_socket_sits_next_to_the_daemon_socket():
    assert admin.admin_socket_path("/run/vcrypto/host.sock") == "/run/vcrypto/host.admin.sock"
    assert admin.admin_socket_path("/x/engine") == "/x/engine.admin.sock"
    assert admin.resolve_admin_socket(None, "/r/backend.sock") == "/r/backend.admin.sock"
    assert admin.resolve_admin_socket("none", "/r/backend.sock") is None
    assert admin.resolve_admin_socket("/elsewhere/a.sock", "/r/backend.sock") == "/elsewhere/a.sock"


def test_runtime_file_names_the_sockets_and_discovery_needs_a_live_pid(tmp_path):
    live, dead = tmp_path / "live", tmp_path / "dead"
    live.mkdir()
    dead.mkdir()
    admin.write_runtime_file(str(live), {"vcrypto-host": {"admin_socket": "/a/h.admin.sock"}})
    admin.write_runtime_file(str(dead), {}, pid=2 ** 22 + 12345)   # above pid_max: no such process
    assert admin.find_runtime_dirs(str(tmp_path))[:1] == [str(live)]
    paths = admin.default_admin_paths(str(live))
    assert paths["vcrypto-host"] == "/a/h.admin.sock"
    assert paths["vcrypto-engine-backend"] == str(live / "backend.admin.sock")


def test_table_and_durations():
    assert table(["A", "BB"], [[1, "x"], [12345, None]], indent="") == \
        ["A       BB", "1       x", "12,345  -"]
    assert [duration(s) for s in (5.25, 125, 7300, 90000)] == ["5.2s", "2m05s", "2h01m", "1d01h"]


HOST_DOC = {
    "daemon": "vcrypto-host", "pid": 10, "uptime_s": 3.0, "socket": "/r/host.sock", "fifo": False,
    "cpu_s": 0.5, "poll": {"mode": "doorbell", "spin_us": 50.0, "batch_threshold": 8,
                           "coalesce_us": 0.0}, "keys": 0,
    "devices": [{"id": 1, "driver_pid": 11, "uptime_s": 2.0, "sessions": 2, "max_sessions": 1024,
                 "sessions_by_kind": {"ecdh/x25519": 1}, "memory_regions": 2,
                 "queues": [{"index": 0, "state": "running", "size": 256, "in_flight": 3,
                             "pending": 1, "poll_state": "parked"}],
                 "counters": {"requests": 7}}],
    "totals": {"kicks": 1, "calls": 2, "polls": 3, "sleeps": 4, "requests": 7, "batches": 5,
               "chain_errors": 0, "resource_faults": 0, "reorder_held": 0, "split_pieces": 0,
               "completions": {"ecdh/x25519/ok": 6, "sign/ed25519/err": 1}, "mean_batch": 1.4},
    "pool": {"policy": "capability", "groups": {}, "failover": None, "in_flight_by_op": {},
             "submitted": 7, "succeeded": 6, "op_errors": 0, "failed": 1, "retries": 0,
             "spills": 0, "not_supported": 0, "waits": 0,
             "resources": [{"name": "hw", "kind": "simulated", "groups": [], "health": "unhealthy",
                            "in_flight": 0, "max_in_flight": 8, "assigned": 7, "completed": 6,
                            "op_errors": 0, "errors": 1, "timeouts": 0, "retries": 0,
                            "spills": 0, "unhealthy_marks": 1, "readmissions": 0,
                            "queue_wait_s": 0.0, "exec_s": 0.01}]},
}


def test_host_block_shows_pool_health_devices_and_queues():
    text = "\n".join(render_host(HOST_DOC, "/r/host.admin.sock"))
    assert "vcrypto-host  pid 10" in text
    assert "completed 6  failed 1" in text
    assert "UNHEALTHY" in text          # an unhealthy resource stands out
    assert "polling doorbell" in text
    assert "parked" in text and "256" in text and "ecdh/x25519 1" in text


def test_backend_block_shows_cache_hit_rate_and_frontends():
    doc = {"daemon": "vcrypto-engine-backend", "pid": 20, "uptime_s": 1.0, "socket": "/r/b.sock",
           "host_socket": "/r/host.sock",
           "device": {"up": False, "kind": "none", "attaches": 1, "down_events": 1,
                      "host_stalls": 0, "sessions": 0, "kicks": 0, "calls": 0,
                      "queue": {"capacity": None, "in_flight": 0, "batch_pending": 0,
                                "full": False}},
           "frontends": [{"id": 1, "pid": 30, "in_flight": 2, "ring_depth": 1, "sessions": 3}],
           "sessions": {"live": 3, "cached": 2, "by_kind": {}, "destroyed": 0, "lost": 0,
                        "cache": {"entries": 2, "hits": 3, "misses": 1, "lookups": 4,
                                  "hit_rate": 0.75}},
           "requests": {"taken": 9, "completed": 7, "bad": 0, "device_errors": 0,
                        "in_flight_by_op": {"sign": 2}},
           "polling": {"mode": "doorbell", "budget_us": 0.0, "inflight_threshold": 8,
                       "poll_passes": 0, "sleeps": 5, "doorbell_wakes": 4, "frontend_calls": 3},
           "batches": {"count": 4, "mean_fill": 2.25, "max": 32, "deadline_us": 0.0,
                       "device_full": 0}}
    text = "\n".join(render_backend(doc, "/r/b.admin.sock"))
    assert "device DOWN" in text
    assert "cache hit rate 75.0% (3/4 lookups)" in text
    assert "in flight: sign 2" in text
    assert "FRONTEND" in text and "30" in text

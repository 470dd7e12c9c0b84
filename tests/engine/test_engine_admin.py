"""The daemons' admin sockets (``vcrypto.admin``) against hostile clients,
on a real vcrypto-host and engine-backend: oversized and malformed requests,
clients that never finish their line, more clients than allowed, clients
that vanish. Each gets an error reply or a closed connection; the daemons
stay up, keep answering ``status``, and keep serving crypto requests while
the admin sockets are being abused."""
from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

import engine_daemons
from vcrypto import admin

pytestmark = pytest.mark.daemons

DAEMONS = ("host", "backend")


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    s = engine_daemons.EngineStack(tmp_path_factory.mktemp("admin")).start()
    paths = {"host": admin.admin_socket_path(s.host.socket_path),
             "backend": admin.admin_socket_path(s.backend.socket_path)}
    deadline = time.monotonic() + 20
    while not all(os.path.exists(p) for p in paths.values()):
        assert time.monotonic() < deadline, "admin sockets did not appear"
        time.sleep(0.02)
    # the engine-backend attaches its device to the host asynchronously: under
    # load that can come after the sockets appear (assert_healthy needs it)
    while not (len(admin.query(paths["host"])["devices"]) == 1
               and admin.query(paths["backend"])["device"]["up"] is True):
        assert time.monotonic() < deadline, "the engine-backend's device did not attach"
        time.sleep(0.05)
    s.admin = paths
    try:
        yield s
    finally:
        s.stop()


def raw(path: str, data: bytes, *, shut: bool = False, timeout_s: float = 10.0) -> bytes:
    """Send ``data``, read until the daemon closes; the bytes it sent."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout_s)
        s.connect(path)
        try:
            s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass   # the daemon cut us off mid-send: what it said is still readable
        if shut:
            s.shutdown(socket.SHUT_WR)
        out = b""
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                return out
            out += chunk
    return out


def error_kind(reply: bytes) -> str:
    obj = json.loads(reply)
    assert obj["ok"] is False, obj
    return obj["error"]["kind"]


def assert_healthy(stack) -> None:
    assert stack.host.proc.poll() is None and stack.backend.proc.poll() is None
    host = admin.query(stack.admin["host"])
    backend = admin.query(stack.admin["backend"])
    assert host["daemon"] == "vcrypto-host" and len(host["devices"]) == 1
    assert backend["daemon"] == "vcrypto-engine-backend" and backend["device"]["up"] is True


@pytest.mark.parametrize("which", DAEMONS)
def test_admin_socket_is_group_only(stack, which):
    mode = stat.S_IMODE(os.stat(stack.admin[which]).st_mode)
    assert mode == admin.SOCKET_MODE == 0o660


@pytest.mark.parametrize("which", DAEMONS)
@pytest.mark.parametrize("data, kind", [
    (b"{" * (64 * 1024), "too_large"),               # no newline, ever
    (b'{"cmd": "status"' + b" " * 4096 + b"}\n", "too_large"),
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "bad_json"),
    (b"\x00\xff\x10garbage\n", "bad_json"),
    (b'{"cmd": "shutdown"}\n', "bad_request"),
    (b'{"cmd": "status", "x": 1}\n', "bad_request"),
])
def test_bad_requests_get_an_error_reply(stack, which, data, kind):
    assert error_kind(raw(stack.admin[which], data)) == kind
    assert_healthy(stack)


@pytest.mark.parametrize("which", DAEMONS)
def test_half_line_then_eof_and_vanishing_clients(stack, which):
    path = stack.admin[which]
    assert error_kind(raw(path, b'{"cmd": "sta', shut=True)) == "bad_json"
    for _ in range(20):       # connect and go away at once, or mid-line
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(path)
            s.send(b'{"cmd"')
    # a client that asks and never reads: the reply goes to its socket buffer
    idle = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    idle.connect(path)
    idle.sendall(admin.encode_request("status"))
    try:
        assert_healthy(stack)
    finally:
        idle.close()


@pytest.mark.parametrize("which", DAEMONS)
def test_a_silent_client_is_timed_out(stack, which):
    started = time.monotonic()
    reply = raw(stack.admin[which], b'{"cmd": "status"', timeout_s=admin.REQUEST_TIMEOUT_S + 8)
    assert error_kind(reply) == "timeout"
    assert time.monotonic() - started >= admin.REQUEST_TIMEOUT_S - 0.1
    assert_healthy(stack)


async def test_crypto_keeps_flowing_while_every_admin_slot_is_held(stack):
    """MAX_CLIENTS silent clients on each admin socket: one more is refused
    ``busy``, and meanwhile real requests through the frontend -> backend ->
    host still complete (no fallback); once the silent ones time out the
    status is served again and shows this frontend and its sessions."""
    held = []
    try:
        for which in DAEMONS:
            for _ in range(admin.MAX_CLIENTS):
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect(stack.admin[which])
                held.append(s)
        await trio.sleep(0.3)   # the daemons have accepted them
        for which in DAEMONS:
            reply = await trio.to_thread.run_sync(raw, stack.admin[which], admin.encode_request("status"))
            assert error_kind(reply) == "busy"
        provider = stack.provider(linger_s=30.0)
        try:
            peer = bytes.fromhex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
            for _ in range(5):
                with trio.fail_after(20):
                    shared, public = await provider.key_exchange("x25519", peer)
                assert len(shared) == 32 and len(public) == 32
            assert provider.frontend.stats.fallback_requests == 0
            for s in held:
                s.close()
            held.clear()
            await trio.sleep(0.2)
            backend = await trio.to_thread.run_sync(admin.query, stack.admin["backend"])
            host = await trio.to_thread.run_sync(admin.query, stack.admin["host"])
        finally:
            await provider.aclose()
    finally:
        for s in held:
            s.close()
    assert os.getpid() in [f["pid"] for f in backend["frontends"]]
    assert backend["sessions"]["by_kind"].get("ecdh/x25519", 0) >= 1   # lingering, 30 s
    assert backend["requests"]["completed"] >= 5
    completed = sum(r["completed"] for r in host["pool"]["resources"])
    assert completed >= 5
    assert host["devices"][0]["driver_pid"] == stack.backend.pid


def test_vcrypto_status_names_a_hung_host_and_still_shows_the_backend(stack):
    """The host stopped (SIGSTOP: its sockets accept, nothing answers):
    ``vcrypto status`` gives up on it after --timeout-s, says so, shows the
    backend, exits 2; once the host runs again both answer (exit 0)."""
    cmd = [str(Path(sys.executable).with_name("vcrypto")), "status", "--timeout-s", "1",
           "--host-admin", stack.admin["host"], "--backend-admin", stack.admin["backend"]]
    # Quiet first: a frontend's sessions being closed at the host while it is
    # stopped would hold the backend's loop in that control round trip (its
    # status would then be late too, rightly).
    deadline = time.monotonic() + 20
    while (b := admin.query(stack.admin["backend"]))["frontends"] or b["sessions"]["live"]:
        assert time.monotonic() < deadline, b
        time.sleep(0.1)
    stack.host.pause()
    try:
        hung = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    finally:
        stack.host.resume()
    assert hung.returncode == 2, hung
    assert "vcrypto-host  UNREACHABLE" in hung.stdout and "no reply within 1.0s" in hung.stdout
    assert "vcrypto-engine-backend  pid" in hung.stdout
    ok = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert "vcrypto-host  pid" in ok.stdout


@pytest.mark.parametrize("flag", ["custom", "none"])
def test_admin_socket_path_is_configurable(tmp_path, flag):
    custom = str(tmp_path / "elsewhere" / "b.sock")
    os.makedirs(os.path.dirname(custom))
    d = engine_daemons.backend(tmp_path, extra=["--admin-socket", custom if flag == "custom" else "none"])
    d.start()
    try:
        default = admin.admin_socket_path(d.socket_path)
        if flag == "custom":
            deadline = time.monotonic() + 10
            while not os.path.exists(custom):
                assert time.monotonic() < deadline
                time.sleep(0.02)
            doc = admin.query(custom)
            assert doc["device"]["kind"] == "local" and doc["pid"] == d.pid
        else:
            time.sleep(0.3)
            assert not os.path.exists(custom)
        assert not os.path.exists(default)
    finally:
        d.stop()
    assert not os.path.exists(custom)    # removed at exit

"""``serve_admin`` in-process, on a real unix socket, with trio's MockClock
(time moves only when the test jumps it): the status document is built at
most once per STATUS_MIN_INTERVAL_S, a handler that raises is answered
``internal`` and the server carries on, a handler that never returns is
answered ``unavailable`` after REPLY_TIMEOUT_S."""
from __future__ import annotations

import argparse
import io
import json

import pytest
import trio
import trio.testing

from vcrypto import admin
from vcrypto.admin import _cli, _server


@pytest.fixture
def clock():
    return trio.testing.MockClock()   # rate 0: frozen unless jumped


async def ask(path: str, cmd: str = "status") -> dict:
    stream = await trio.open_unix_socket(path)
    async with stream:
        await stream.send_all(admin.encode_request(cmd))
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
    return json.loads(data)


async def test_status_is_built_at_most_once_per_interval(tmp_path, clock, nursery):
    calls = []

    async def handler(req):
        calls.append(req.cmd)
        return {"n": len(calls)}

    path = str(tmp_path / "a.admin.sock")
    await nursery.start(admin.serve_admin, path, handler)
    replies = [await ask(path) for _ in range(3)]
    assert [r["status"]["n"] for r in replies] == [1, 1, 1] and calls == ["status"]
    clock.jump(_server.STATUS_MIN_INTERVAL_S)
    assert (await ask(path))["status"]["n"] == 2
    assert (await ask(path, "ping")) == {"v": 1, "ok": True, "cmd": "ping"}
    assert calls == ["status", "status"]    # ping never builds the document


async def test_a_failing_handler_is_an_internal_error_not_a_crash(tmp_path, clock, nursery):
    async def handler(req):
        raise KeyError("a bug")

    path = str(tmp_path / "b.admin.sock")
    await nursery.start(admin.serve_admin, path, handler)
    for _ in range(2):
        reply = await ask(path)
        assert reply["ok"] is False and reply["error"]["kind"] == "internal"
        assert "KeyError" in reply["error"]["detail"]
    assert (await ask(path, "ping"))["ok"] is True


async def test_a_handler_that_never_answers_is_reported_unavailable(tmp_path, clock, nursery):
    async def handler(req):
        await trio.sleep_forever()   # e.g. the backend's poll loop is stuck

    path = str(tmp_path / "c.admin.sock")
    await nursery.start(admin.serve_admin, path, handler)
    result = {}

    async def client():
        result["reply"] = await ask(path)

    async with trio.open_nursery() as inner:
        inner.start_soon(client)
        await trio.testing.wait_all_tasks_blocked()
        clock.jump(_server.REPLY_TIMEOUT_S)
    assert result["reply"]["error"]["kind"] == "unavailable"


async def test_cli_tabulates_what_it_can_and_never_prints_a_traceback(tmp_path, nursery):
    """A daemon answering a document of another shape (another version):
    ``vcrypto status`` says it cannot tabulate it and points at --json."""
    async def handler(req):
        return {"daemon": "vcrypto-host", "pid": 1}   # no pool, no devices

    path = str(tmp_path / "d.admin.sock")
    await nursery.start(admin.serve_admin, path, handler)
    args = argparse.Namespace(json=False, runtime_dir=None, host_admin=path, backend_admin=None,
                              timeout_s=5.0)
    out, err = io.StringIO(), io.StringIO()
    rc = await trio.to_thread.run_sync(lambda: _cli.status(args, out=out, err=err))
    assert rc == 0
    assert "cannot tabulate" in out.getvalue() and "--json" in out.getvalue()

"""The engine-backend's admin socket: ``vcrypto.admin.serve_admin`` on a thread.

The backend's poll loop is a plain epoll loop on one thread (``_loop``), so
the admin server runs on its own daemon thread with its own trio loop: a
hostile or slow admin client (never sending its line, never reading the
reply) costs that thread, never the data plane. For ``status`` the thread
asks the loop (``Backend.ask_status``: a deque entry and one byte on the
loop's wake socket) and waits; the loop builds the document at the top of
its next pass (``_status.backend_status``) and hands it back through the
trio token. A loop that does not answer within the server's bound is
reported as ``unavailable`` (a stuck backend, visible to ``vcrypto status``).
"""
from __future__ import annotations

import functools
import threading

import trio

from vcrypto import admin
from vcrypto._unixsock import SocketAccess


class AdminThread:
    def __init__(self, backend, path: str, access: SocketAccess | None = None):
        self._backend = backend
        self.path = path
        self._access = access   # the engine-backend's own socket mode and group
        self._token: trio.lowlevel.TrioToken | None = None
        self._cancel = trio.CancelScope()
        self._started = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="engine-admin", daemon=True)

    def start(self, timeout_s: float = 5.0) -> None:
        """Start serving; raises what binding the socket raised."""
        self._thread.start()
        self._started.wait(timeout_s)
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:  # noqa: BLE001 - reported to start() / ignored at exit
            self.error = exc
            self._started.set()

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        with self._cancel:
            async with trio.open_nursery() as nursery:
                await nursery.start(functools.partial(admin.serve_admin, access=self._access),
                                    self.path, self._handle)
                self._started.set()

    async def _handle(self, request: admin.AdminRequest) -> dict:
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()
        box: dict = {}

        def deliver(doc: dict | None, error: BaseException | None) -> None:  # loop thread
            def settle() -> None:
                box["doc"], box["error"] = doc, error
                done.set()
            try:
                token.run_sync_soon(settle)
            except trio.RunFinishedError:
                pass

        self._backend.ask_status(deliver)
        await done.wait()   # bounded by serve_admin (an "unavailable" reply)
        if box["error"] is not None:
            raise box["error"]
        return box["doc"]

    def close(self) -> None:
        token = self._token
        if token is not None and self._thread.is_alive():
            try:
                token.run_sync_soon(self._cancel.cancel)
            except trio.RunFinishedError:
                pass
            self._thread.join(5)

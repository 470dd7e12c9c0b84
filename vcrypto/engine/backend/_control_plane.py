"""The engine-backend's control plane: what crosses a frontend's control socket.

``Backend`` (``_loop``) is the data plane (rings, batches, the device); it
owns one ``ControlPlane``: the listening socket, the table of attached
frontends (``FrontendConn``: socket, region, references, in-flight count)
and the control messages. Here: accepting frontends, the attach handshake
(region created, registered with the device, fds sent), ``open``/
``acquire``/``release`` with each frontend's references counted in
``FrontendConn.refs``, ``stats``, and dropping a frontend (its references
dropped, its region freed once nothing is in flight). Separate from the
poll loop because none of it runs per request: it is driven by control
messages. It reaches the data plane only through the ``Backend``'s public
calls, the ``DataPlane`` protocol below (``Backend`` is one).
"""
from __future__ import annotations

import os
import selectors
import logging
import socket
from typing import Protocol

from vcrypto._log import event
from vcrypto.shm.region import Region, RegionError

from ..contract import FrontendRegion, Geometry, LayoutError, SessionMeta, control
from ._metrics import BackendStats
from ._sessions import Session, BackendSessionTable

log = logging.getLogger("vcrypto.engine.backend")


class FrontendConn:
    """One attached frontend, as the backend sees it."""

    def __init__(self, fid: int, sock: socket.socket):
        self.fid = fid
        self.sock = sock
        self.decoder = control.FrameDecoder()
        self.region: FrontendRegion | None = None
        self.shm: Region | None = None
        self.efd = -1
        self.pid = 0
        self.refs: dict[int, int] = {}
        self.inflight = 0
        self.alive = True


class DataPlane(Protocol):
    """What the control plane needs of the backend (``Backend`` is one)."""

    stats: BackendStats
    sessions: BackendSessionTable

    @property
    def geometry(self) -> Geometry: ...

    @property
    def control_send_timeout_s(self) -> float: ...

    def shared_fds(self) -> tuple[int, int]: ...

    def register_region(self, fe: FrontendConn) -> None: ...

    def unregister_region(self, fe: FrontendConn) -> None: ...

    def open_session(self, refs: dict[int, int], meta: SessionMeta) -> dict: ...

    def unref(self, sess: Session) -> None: ...

    def take_pending(self, fe: FrontendConn) -> None: ...

    def snapshot(self) -> dict: ...


class ControlPlane:
    """Frontend attach, control messages, per-frontend session references."""

    def __init__(self, backend: DataPlane, selector: selectors.BaseSelector, listener: socket.socket):
        self._backend = backend
        self._sel = selector
        self._listener = listener
        self.frontends: dict[int, FrontendConn] = {}
        self.order: list[FrontendConn] = []   # attached frontends, drained round-robin
        self._next_fid = 1

    def close(self) -> None:
        for fe in list(self.frontends.values()):
            self.drop(fe)
        self._listener.close()

    def accept(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except BlockingIOError:
                return
            sock.setblocking(False)
            fe = FrontendConn(self._next_fid, sock)
            self._next_fid += 1
            self.frontends[fe.fid] = fe
            self._sel.register(sock, selectors.EVENT_READ, ("ctl", fe))

    def read(self, fe: FrontendConn) -> None:
        try:
            data, fds, _flags, _addr = socket.recv_fds(fe.sock, 65536, 4)
        except BlockingIOError:
            return
        except OSError:
            data, fds = b"", []
        if not data:
            for fd in fds:
                os.close(fd)
            event(log, "info", "frontend_closed", frontend=fe.fid, frontend_pid=fe.pid)
            self.drop(fe)
            return
        try:
            msgs = fe.decoder.feed(data)
            for msg in msgs:
                if not fe.alive:  # dropped by an earlier message (a failed send)
                    break
                self._on_message(fe, msg, fds)
                fds = []
        except (control.ControlProtocolError, LayoutError, KeyError, ValueError, TypeError,
                RegionError, OSError) as exc:
            event(log, "warning", "frontend_dropped", frontend=fe.fid, frontend_pid=fe.pid,
                  reason=f"bad control message: {exc!r}")
            self.drop(fe)
        finally:
            for fd in fds:
                os.close(fd)

    def _send(self, fe: FrontendConn, msg: dict, fds=()) -> None:
        data = control.encode(msg)
        try:
            # Replies are small; a frontend that stops reading must not stall
            # the poll loop for long: bounded wait, then it is dropped.
            fe.sock.settimeout(self._backend.control_send_timeout_s)
            if fds:
                socket.send_fds(fe.sock, [data[:1]], list(fds))
                data = data[1:]
            fe.sock.sendall(data)
        except OSError as exc:
            event(log, "warning", "frontend_dropped", frontend=fe.fid, frontend_pid=fe.pid,
                  reason=f"send failed: {exc!r}")
            self.drop(fe)
        finally:
            if fe.alive:
                fe.sock.setblocking(False)

    def _on_message(self, fe: FrontendConn, msg: dict, fds: list[int]) -> None:
        t = msg["t"]
        if t == "attach":
            self._attach(fe, msg, fds)
            return
        if fe.region is None and t != "stats":  # stats: also for monitoring tools
            raise control.ControlProtocolError(f"{t!r} before attach")
        rid = msg.get("id")
        backend, sessions = self._backend, self._backend.sessions
        if t == "open":
            meta = SessionMeta.from_canonical(bytes.fromhex(msg["meta"]))
            self._send(fe, backend.open_session(fe.refs, meta) | {"t": "reply", "id": rid})
        elif t == "acquire":
            sess = sessions.acquire(int(msg["sid"]), bytes.fromhex(msg["meta"]))
            if sess is not None:
                sessions.ref(fe.refs, sess)
                self._send(fe, {"t": "reply", "id": rid, "ok": True, "sid": sess.sid})
            else:
                self._send(fe, {"t": "reply", "id": rid, "ok": False, "kind": "stale"})
        elif t == "release":
            # The frontend pushed any request on this session to its ring before
            # it sent the release: take them first, so each holds its own
            # reference instead of finding the session gone (a cancelled
            # task's last record would otherwise come back INVALID unrun).
            backend.take_pending(fe)
            sess = sessions.get(int(msg["sid"]))
            if sess is not None and fe.refs.get(sess.sid, 0) > 0:
                fe.refs[sess.sid] -= 1
                backend.unref(sess)
            self._send(fe, {"t": "reply", "id": rid, "ok": True})
        elif t == "stats":
            self._send(fe, {"t": "reply", "id": rid, "ok": True, "stats": backend.snapshot()})
        else:
            raise control.ControlProtocolError(f"unknown control message {t!r}")

    def _attach(self, fe: FrontendConn, msg: dict, fds: list[int]) -> None:
        if fe.region is not None or msg.get("v") != control.PROTOCOL_VERSION or len(fds) != 1:
            raise control.ControlProtocolError(
                f"bad attach (version {msg.get('v')}, {len(fds)} fds)")
        backend = self._backend
        fe.efd = fds.pop()
        fe.pid = int(msg.get("pid", 0))
        geo = backend.geometry
        fe.shm = Region.create(f"frontend-{fe.fid}", geo.region_bytes)
        fe.region = FrontendRegion(fe.shm.buf, geo, create=True)
        backend.register_region(fe)
        self.order.append(fe)
        backend.stats.frontends_attached += 1
        self._send(fe, {"t": "attached", "frontend_id": fe.fid, "pid": os.getpid()},
                   fds=(fe.shm.fd, *backend.shared_fds()))

    # -- frontends ----------------------------------------------------------------------

    def drop(self, fe: FrontendConn) -> None:
        if not fe.alive:
            return
        fe.alive = False
        backend = self._backend
        backend.stats.frontends_detached += 1
        try:
            self._sel.unregister(fe.sock)
        except (KeyError, ValueError):
            pass
        fe.sock.close()
        if fe.efd >= 0:
            os.close(fe.efd)
            fe.efd = -1
        self.frontends.pop(fe.fid, None)
        for sid, n in list(fe.refs.items()):
            sess = backend.sessions.get(sid)
            for _ in range(n):
                if sess is not None:
                    backend.unref(sess)
        fe.refs.clear()
        if fe in self.order:
            self.order.remove(fe)
        if fe.inflight == 0:
            self.free_region(fe)

    def free_region(self, fe: FrontendConn) -> None:
        if fe.shm is None:
            return
        self._backend.unregister_region(fe)
        fe.region.release()
        fe.shm.close()
        fe.shm = None

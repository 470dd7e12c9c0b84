"""The engine-backend's control plane: what crosses a frontend's control socket.

``Backend`` (``_loop``) is the data plane (rings, batches, the device) plus
this mixin. Here: accepting frontends, the attach handshake (region created,
registered with the device, fds sent), session ``open``/``acquire``/
``release`` with each frontend's references counted in ``_Frontend.refs``
(the table itself is ``_sessions``), ``stats``, and dropping a frontend
(its references dropped, its region freed once nothing is in flight).
Separate from the poll loop because none of it runs per request: it is
driven by control messages, and the loop only calls ``_drop_frontend``,
``_free_region`` and ``_unref`` from the work pass.

The mixin uses the ``Backend`` state it is mixed into: ``cfg``, ``stats``,
``device``, ``sessions``, ``shared``, ``_sel``, ``_listener``, ``_shm``,
``_doorbell``, ``_frontends``, ``_order``, ``_next_fid``, ``_epoch`` and the
methods ``_device_failed``, ``_device_sid``, ``snapshot``.
"""
from __future__ import annotations

import os
import selectors
import socket
import sys

from vcrypto.shm.region import Region, RegionError

from . import _control
from ._device import DeviceError, SessionRejected
from ._layout import FrontendRegion, LayoutError, SessionMeta
from ._sessions import Session


class _Frontend:
    def __init__(self, fid: int, sock: socket.socket):
        self.fid = fid
        self.sock = sock
        self.decoder = _control.FrameDecoder()
        self.region: FrontendRegion | None = None
        self.shm: Region | None = None
        self.efd = -1
        self.pid = 0
        self.refs: dict[int, int] = {}
        self.inflight = 0
        self.alive = True


class _ControlPlane:
    """Mixin of ``Backend``: frontend attach, control messages, session refs."""

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except BlockingIOError:
                return
            sock.setblocking(False)
            fe = _Frontend(self._next_fid, sock)
            self._next_fid += 1
            self._frontends[fe.fid] = fe
            self._sel.register(sock, selectors.EVENT_READ, ("ctl", fe))

    def _read_control(self, fe: _Frontend) -> None:
        try:
            data, fds, _flags, _addr = socket.recv_fds(fe.sock, 65536, 4)
        except BlockingIOError:
            return
        except OSError:
            data, fds = b"", []
        if not data:
            for fd in fds:
                os.close(fd)
            print(f"engine-backend: frontend {fe.fid} (pid {fe.pid}) closed", file=sys.stderr)
            self._drop_frontend(fe)
            return
        try:
            msgs = fe.decoder.feed(data)
            for msg in msgs:
                if not fe.alive:  # dropped by an earlier message (a failed send)
                    break
                self._on_message(fe, msg, fds)
                fds = []
        except (_control.ControlProtocolError, LayoutError, KeyError, ValueError, TypeError,
                RegionError, OSError) as exc:
            print(f"engine-backend: frontend {fe.fid}: bad control message: {exc!r}",
                  file=sys.stderr)
            self._drop_frontend(fe)
        finally:
            for fd in fds:
                os.close(fd)

    def _send(self, fe: _Frontend, msg: dict, fds=()) -> None:
        data = _control.encode(msg)
        try:
            # Replies are small; a frontend that stops reading must not stall
            # the poll loop for long: bounded wait, then it is dropped.
            fe.sock.settimeout(self.cfg.control_send_timeout_s)
            if fds:
                socket.send_fds(fe.sock, [data[:1]], list(fds))
                data = data[1:]
            fe.sock.sendall(data)
        except OSError as exc:
            print(f"engine-backend: frontend {fe.fid}: send failed: {exc!r}", file=sys.stderr)
            self._drop_frontend(fe)
        finally:
            if fe.alive:
                fe.sock.setblocking(False)

    def _on_message(self, fe: _Frontend, msg: dict, fds: list[int]) -> None:
        t = msg["t"]
        if t == "attach":
            self._attach(fe, msg, fds)
            return
        if fe.region is None and t != "stats":  # stats: also for monitoring tools
            raise _control.ControlProtocolError(f"{t!r} before attach")
        rid = msg.get("id")
        if t == "open":
            meta = SessionMeta.from_canonical(bytes.fromhex(msg["meta"]))
            self._send(fe, self._open(fe, meta) | {"t": "reply", "id": rid})
        elif t == "acquire":
            sess = self.sessions.acquire(int(msg["sid"]), str(msg["md5"]))
            if sess is not None:
                self.sessions.ref(fe.refs, sess)
                self._send(fe, {"t": "reply", "id": rid, "ok": True, "sid": sess.sid})
            else:
                self._send(fe, {"t": "reply", "id": rid, "ok": False, "kind": "stale"})
        elif t == "release":
            # The frontend pushed any request on this session to its ring before
            # it sent the release: take them first, so each holds its own
            # reference instead of finding the session gone (a cancelled
            # task's last record would otherwise come back INVALID unrun).
            self._take_pending(fe)
            sess = self.sessions.get(int(msg["sid"]))
            if sess is not None and fe.refs.get(sess.sid, 0) > 0:
                fe.refs[sess.sid] -= 1
                self._unref(sess)
            self._send(fe, {"t": "reply", "id": rid, "ok": True})
        elif t == "stats":
            self._send(fe, {"t": "reply", "id": rid, "ok": True, "stats": self.snapshot()})
        else:
            raise _control.ControlProtocolError(f"unknown control message {t!r}")

    def _attach(self, fe: _Frontend, msg: dict, fds: list[int]) -> None:
        if fe.region is not None or msg.get("v") != _control.PROTOCOL_VERSION or len(fds) != 1:
            raise _control.ControlProtocolError(
                f"bad attach (version {msg.get('v')}, {len(fds)} fds)")
        fe.efd = fds.pop()
        fe.pid = int(msg.get("pid", 0))
        geo = self.cfg.geometry
        fe.shm = Region.create(f"frontend-{fe.fid}", geo.region_bytes)
        fe.region = FrontendRegion(fe.shm.buf, geo, create=True)
        if self.device is not None:
            try:
                self.device.register_region(fe.fid, fe.shm)
            except DeviceError as exc:
                self._device_failed(exc)
        self._order.append(fe)
        self.stats.frontends_attached += 1
        self._send(fe, {"t": "attached", "frontend_id": fe.fid, "pid": os.getpid()},
                   fds=(fe.shm.fd, self._shm.fd, self._doorbell))

    # -- sessions -----------------------------------------------------------------------

    def _open(self, fe: _Frontend, meta: SessionMeta) -> dict:
        canonical = meta.canonical()
        sess = self.sessions.find(canonical)
        if sess is not None:
            self.sessions.ref(fe.refs, sess)
            return {"ok": True, "sid": sess.sid, "hit": True}
        sess = self.sessions.new(meta, canonical)
        if self.device is not None:
            try:
                self._device_sid(sess)  # validated at create (§8a: strict session protocol)
            except SessionRejected as exc:
                return {"ok": False, "kind": "rejected", "detail": str(exc)}
            except DeviceError as exc:
                self._device_failed(exc)
        self.sessions.add(sess)
        self.sessions.ref(fe.refs, sess)
        return {"ok": True, "sid": sess.sid, "hit": False}

    def _unref(self, sess: Session) -> None:
        if not self.sessions.unref(sess):
            return
        if sess.device_sid is not None and self.device is not None and sess.epoch == self._epoch:
            try:
                self.device.close_session(sess.device_sid)
            except DeviceError as exc:
                self._device_failed(exc)

    # -- frontends ----------------------------------------------------------------------

    def _drop_frontend(self, fe: _Frontend) -> None:
        if not fe.alive:
            return
        fe.alive = False
        self.stats.frontends_detached += 1
        try:
            self._sel.unregister(fe.sock)
        except (KeyError, ValueError):
            pass
        fe.sock.close()
        if fe.efd >= 0:
            os.close(fe.efd)
            fe.efd = -1
        self._frontends.pop(fe.fid, None)
        for sid, n in list(fe.refs.items()):
            sess = self.sessions.get(sid)
            for _ in range(n):
                if sess is not None:
                    self._unref(sess)
        fe.refs.clear()
        if fe in self._order:
            self._order.remove(fe)
        if fe.inflight == 0:
            self._free_region(fe)

    def _free_region(self, fe: _Frontend) -> None:
        if fe.shm is None:
            return
        if self.device is not None:
            try:
                self.device.unregister_region(fe.fid)
            except DeviceError as exc:
                self._device_failed(exc)
        fe.region.release()
        fe.shm.close()
        fe.shm = None

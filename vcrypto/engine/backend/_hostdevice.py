"""``HostDevice``: the engine-backend's device is a vcrypto-host, reached
through ``vcrypto.driver``.

The backend's poll loop is a plain epoll loop (one thread, no trio: a trio
wake-up costs ~14 us here, and the loop wakes for every batch). The driver's
*data path* (``enqueue_burst`` / ``dequeue_burst``, notification flags) is
synchronous shared-memory code, so the loop calls it directly. The driver's
*control path* (attach, session create/close, region registration, stats)
is trio code on a unix socket; it runs on a small helper thread that hosts a
trio loop, and the backend calls into it with ``trio.from_thread.run`` —
the control path is rare and may block the poll loop for its round trip
(sessions are created once and cached; notes: "never busy-poll the control
path").

Frontend regions are registered with the host (vhost-user ADD_MEM_REG), so a
request's descriptor chain points straight into the frontend's slot chunk:
the host reads the input and writes the output where the frontend reads it.

Host death: the backend watches a duplicate of the driver's socket in its
epoll set. Between control requests the host never speaks first, so
readability there means EOF (or a protocol violation): the device is lost.
"""
from __future__ import annotations

import functools
import os
import socket
import threading

import trio

from vcrypto.driver import (DataOp, Driver, DriverError, DriverTimeout, SessionCreateError,
                            SessionParams)
from vcrypto.ops import max_dst_bytes
from vcrypto.shm.region import Region
from vcrypto.wire import virtio_crypto as vc

from ..contract import Geometry, SessionMeta, SlotStatus
from ._device import (Completion, CryptoDevice, CryptoDeviceError, CryptoDeviceStalled,
                      DeviceRequest, SessionRejected)

_STATUS = {
    vc.VIRTIO_CRYPTO_OK: SlotStatus.OK,
    vc.VIRTIO_CRYPTO_BADMSG: SlotStatus.BAD_MESSAGE,
    vc.VIRTIO_CRYPTO_NOTSUPP: SlotStatus.NOT_SUPPORTED,
    vc.VIRTIO_CRYPTO_INVSESS: SlotStatus.SESSION_LOST,   # the backend recreates it, redoes once
    vc.VIRTIO_CRYPTO_KEY_REJECTED: SlotStatus.INVALID,
    # ERR (a resource fault that exhausted the host's retries, or input the
    # host could not process) and NOSPC: the frontend redoes the request
    # in-process, which gives the authoritative answer either way.
}


class _TrioThread:
    """A daemon thread running a trio loop, for the driver's control path."""

    def __init__(self) -> None:
        self._ready = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._thread = threading.Thread(target=trio.run, args=(self._serve,),
                                        name="engine-control", daemon=True)
        self._thread.start()
        self._ready.wait(10)

    async def _serve(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._stop = trio.Event()
        self._ready.set()
        await self._stop.wait()

    def run(self, afn, *args, timeout_s: float = 5.0):
        async def call():
            with trio.fail_after(timeout_s):
                return await afn(*args)
        return trio.from_thread.run(call, trio_token=self._token)

    def close(self) -> None:
        if self._thread.is_alive() and self._stop is not None:
            try:
                trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
            except trio.RunFinishedError:
                pass
            self._thread.join(5)


class HostDevice(CryptoDevice):
    def __init__(self, host_socket: str, *, geometry: Geometry | None = None,
                 queue_size: int = 256, control_timeout_s: float = 5.0,
                 attach_timeout_s: float | None = None):
        # The poll loop waits for every control round trip, the attach too: a
        # hung host accepts the connection and never answers. Past the bound,
        # CryptoDeviceStalled. The attach may be bounded apart (a host just failed
        # as hung is probed with the engine's stall deadline).
        self._timeout = control_timeout_s if attach_timeout_s is None else attach_timeout_s
        self._control_busy = 0     # control requests under way (they own the socket)
        self._portal = _TrioThread()
        try:
            self._drv: Driver = self._call(functools.partial(
                Driver.attach, host_socket, queues=1, queue_size=queue_size,
                control_timeout_s=self._timeout))
        except CryptoDeviceError:
            self._portal.close()
            raise
        self._timeout = self._drv.control_timeout_s = control_timeout_s
        self._q = self._drv.queues[0]
        self.stateless_aead = self._q.stateless_aead
        self.call_fd = self._q.call_fd
        self._watch = socket.fromfd(self._drv._sock.fileno(), socket.AF_UNIX, socket.SOCK_STREAM)
        self._watch.setblocking(False)
        self.watch_fd = self._watch.fileno()
        self._handles: dict[int, object] = {}
        self._sessions = 0
        self.submitted = 0

    def _call(self, afn, *args):
        self._control_busy += 1
        try:
            # The driver bounds each control message by ``self._timeout``
            # (DriverTimeout naming it); the portal's bound, a little longer,
            # is the backstop for the call as a whole.
            return self._portal.run(afn, *args, timeout_s=self._timeout + 1.0)
        except SessionCreateError:
            raise
        except (DriverTimeout, trio.TooSlowError) as exc:
            raise CryptoDeviceStalled(f"vcrypto-host stalled: no answer to a control request within "
                                f"{self._timeout}s ({exc!r})") from exc
        except (DriverError, OSError, trio.TooSlowError, EOFError) as exc:
            raise CryptoDeviceError(f"vcrypto-host control path: {exc!r}") from exc
        except Exception as exc:  # noqa: BLE001 - any wire/transport failure means the device is gone
            raise CryptoDeviceError(f"vcrypto-host control path: {exc!r}") from exc
        finally:
            self._control_busy -= 1

    # -- control path ---------------------------------------------------------------

    def register_region(self, region_id: int, region: Region) -> None:
        self._handles[region_id] = self._call(self._drv.register_region, region)

    def unregister_region(self, region_id: int) -> None:
        h = self._handles.pop(region_id, None)
        if h is not None:
            self._call(self._drv.unregister_region, h)

    def create_session(self, meta: SessionMeta) -> int:
        params = SessionParams(meta.op, meta.alg, key=meta.key, key_ref=meta.key_ref or None)
        try:
            sid = self._call(self._drv.create_session, params)
        except SessionCreateError as exc:
            raise SessionRejected(str(exc)) from exc
        self._sessions += 1
        return sid

    def close_session(self, device_sid: int) -> None:
        self._call(self._drv.close_session, device_sid)
        self._sessions -= 1

    def stats(self) -> dict:
        return self._call(self._drv.stats)

    # -- data path ------------------------------------------------------------------------

    def submit(self, batch: list[DeviceRequest]) -> int:
        ops = []
        for dr in batch:
            h = self._handles.get(dr.region_id)
            if h is None:
                raise CryptoDeviceError(f"region {dr.region_id} is not registered")
            r = dr.req
            dst_len = min(r.dst_cap, max_dst_bytes(r.op, r.alg, r.src_len))
            # stateless (key_len > 0): the descriptor points at the slot's key field
            ops.append(DataOp(dr.device_sid, r.op, src=h.buf(r.src_offset, r.src_len),
                              dst=h.buf(r.dst_offset, dst_len),
                              iv=h.buf(r.iv_offset, r.iv_len) if r.iv_len else None,
                              aad=h.buf(r.aad_offset, r.aad_len) if r.aad_len else None,
                              token=dr.token,
                              key=h.buf(r.key_offset, r.key_len) if r.key_len else None,
                              alg=r.alg))
        try:
            n = self._q.enqueue_burst(ops)
        except (DriverError, OSError) as exc:
            raise CryptoDeviceError(f"enqueue: {exc}") from exc
        self.submitted += n
        return n

    def completions(self) -> list[Completion]:
        try:
            done = self._q.dequeue_burst()
        except DriverError as exc:
            raise CryptoDeviceError(f"dequeue: {exc}") from exc
        return [(c.token, _STATUS.get(c.status, SlotStatus.DEVICE_ERROR), c.dst_len)
                for c in done]

    def arm_notify(self) -> bool:
        self._q.vq.driver_enable_calls()
        return True

    def has_completions(self) -> bool:
        return bool(self._q.pending())

    def disarm_notify(self) -> None:
        self._q.vq.driver_disable_calls()

    def ack_call(self) -> None:
        try:
            os.eventfd_read(self.call_fd)
            self._q.calls += 1
        except BlockingIOError:
            pass

    def watch_event(self) -> None:
        """The driver socket became readable outside a control request."""
        if self._control_busy:
            # A reply on its way to a control request made from another
            # thread than the loop's (the loop's own requests block it).
            return
        try:
            data = self._watch.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            return
        except OSError as exc:
            raise CryptoDeviceError(f"vcrypto-host connection: {exc}") from exc
        raise CryptoDeviceError("vcrypto-host closed the connection" if not data
                          else "vcrypto-host sent an unsolicited message")

    @property
    def kicks(self) -> int:
        """Doorbells we rang at the host (it was asleep)."""
        return self._q.kicks

    @property
    def calls(self) -> int:
        """Notifications the host sent us (we were asleep)."""
        return self._q.calls

    @property
    def session_count(self) -> int:
        return self._sessions

    @property
    def inflight(self) -> int:
        return self._q.in_flight

    @property
    def queue_capacity(self) -> int:
        """Requests the data virtqueue to the host holds at once."""
        return self._q.capacity

    def close(self) -> None:
        try:
            self._watch.close()
            self._portal.run(self._drv.aclose, timeout_s=2.0)
        except Exception:  # noqa: BLE001 - closing a dead device must not raise
            pass
        finally:
            self._portal.close()

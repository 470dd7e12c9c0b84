"""What the engine-backend drives: a crypto *device*.

``CryptoDevice`` is the backend's view of the thing behind it. ``HostDevice`` (in
``_hostdevice``) is the real one: a vcrypto-host reached through
``vcrypto.driver`` (control queue for sessions, data virtqueue for requests,
frontend regions registered as memory regions so the host works in place).
``LocalDevice`` runs requests in the backend process itself with
``cryptography``; it exists for the explicit start-up fallback mode
(``--no-host``: an engine with no host behind it still serves frontends)
and is what the engine's own protocol tests run against when they test the
frontend/backend pair rather than the host.

Requests are identified by an opaque ``token`` the backend chooses; a device
reports ``(token, status, dst_len)`` completions, having written the output
into the request's ``dst`` range of the frontend region.
"""
from __future__ import annotations

import abc
import dataclasses

from vcrypto.shm.region import Region
from vcrypto.ops import Op, ecdh_secret_only

from ..contract import (FrontendRegion, InlineOpError, InlineSession, SessionMeta,
                        SlotRequest, SlotStatus)


class CryptoDeviceError(Exception):
    """The device is unreachable or failed; the backend marks it down."""


class CryptoDeviceStalled(CryptoDeviceError):
    """The device is alive but does not answer in time (hung): failed like a
    lost one, and counted apart (``host_stalls``)."""


class SessionRejected(Exception):
    """The device refused to create a session (bad key, unsupported alg)."""


@dataclasses.dataclass(slots=True)
class DeviceRequest:
    token: int
    region_id: int
    region: FrontendRegion
    req: SlotRequest
    device_sid: int


Completion = tuple[int, SlotStatus, int]


class CryptoDevice(abc.ABC):
    #: takes stateless AEAD requests (``DeviceRequest.req.key_len`` > 0: the key
    #: in the slot, ``device_sid`` 0) -- virtio's VIRTIO_CRYPTO_F_AEAD_STATELESS_MODE
    stateless_aead: bool = False
    #: fd that becomes readable when completions may be waiting (or None)
    call_fd: int | None = None
    #: fd that becomes readable when the device connection breaks (or None)
    watch_fd: int | None = None

    @abc.abstractmethod
    def register_region(self, region_id: int, region: Region) -> None: ...

    @abc.abstractmethod
    def unregister_region(self, region_id: int) -> None: ...

    @abc.abstractmethod
    def create_session(self, meta: SessionMeta) -> int:
        """Create the session on the device (control path); its device id."""

    @abc.abstractmethod
    def close_session(self, device_sid: int) -> None: ...

    @abc.abstractmethod
    def submit(self, batch: list[DeviceRequest]) -> int:
        """Queue a batch; returns how many were accepted (a prefix)."""

    @abc.abstractmethod
    def completions(self) -> list[Completion]:
        """Completed requests since the last call (may be empty)."""

    def arm_notify(self) -> bool:
        """Ask to be woken through ``call_fd``. False if work is already
        waiting (then do not sleep)."""
        return True

    def has_completions(self) -> bool:
        """Checked after arming and fencing: True means do not sleep."""
        return False

    def watch_event(self) -> None:
        """``watch_fd`` became readable: raise ``CryptoDeviceError`` if the device is gone."""

    def disarm_notify(self) -> None:
        pass

    def ack_call(self) -> None:
        """Consume a wake-up on ``call_fd``."""

    @property
    def session_count(self) -> int:
        return 0

    def close(self) -> None:
        pass


class LocalDevice(CryptoDevice):
    """Requests run in the backend process (no host). See the module doc."""

    stateless_aead = True

    def __init__(self) -> None:
        self._sessions: dict[int, InlineSession] = {}
        self._next_sid = 1
        self._done: list[Completion] = []
        self.executed = 0

    def register_region(self, region_id: int, region: Region) -> None:
        pass

    def unregister_region(self, region_id: int) -> None:
        pass

    def create_session(self, meta: SessionMeta) -> int:
        try:
            sess = InlineSession(meta)
        except InlineOpError as exc:
            raise SessionRejected(str(exc)) from exc
        sid = self._next_sid
        self._next_sid += 1
        self._sessions[sid] = sess
        return sid

    def close_session(self, device_sid: int) -> None:
        self._sessions.pop(device_sid, None)

    def submit(self, batch: list[DeviceRequest]) -> int:
        for dr in batch:
            r, mv = dr.req, dr.region.mv
            if r.key_len:   # stateless: the key is in the slot
                try:
                    sess = InlineSession(SessionMeta(
                        r.op, r.alg, bytes(mv[r.key_offset:r.key_offset + r.key_len])))
                except InlineOpError as exc:
                    self._done.append((dr.token, exc.status, 0))
                    continue
            else:
                sess = self._sessions.get(dr.device_sid)
            if sess is None:
                self._done.append((dr.token, SlotStatus.SESSION_LOST, 0))
                continue
            try:
                out = sess.perform(bytes(mv[r.src_offset:r.src_offset + r.src_len]),
                                   bytes(mv[r.iv_offset:r.iv_offset + r.iv_len]),
                                   bytes(mv[r.aad_offset:r.aad_offset + r.aad_len]),
                                   r.op is Op.ECDH and ecdh_secret_only(r.alg, r.dst_cap))
            except InlineOpError as exc:
                self._done.append((dr.token, exc.status, 0))
                continue
            if len(out) > r.dst_cap:
                self._done.append((dr.token, SlotStatus.INVALID, 0))
                continue
            mv[r.dst_offset:r.dst_offset + len(out)] = out
            self._done.append((dr.token, SlotStatus.OK, len(out)))
            self.executed += 1
        return len(batch)

    def completions(self) -> list[Completion]:
        done, self._done = self._done, []
        return done

    def arm_notify(self) -> bool:
        return not self._done

    def has_completions(self) -> bool:
        return bool(self._done)

    @property
    def session_count(self) -> int:
        return len(self._sessions)

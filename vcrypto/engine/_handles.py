"""The frontend's session handles: the local handle table, its lingering
release and the reaper task (DESIGN §5, the frontend side).

``Frontend`` (``frontend``) mixes ``_SessionHandles`` in; its module
docstring tells the whole story ("Sessions:"). Here: ``EngineSession`` (one
handle per canonical metadata, local refcount, the backend sid valid for
one attachment generation), ``open_session``/``close_session``/
``release_soon``, the reaper that drops the backend reference ``linger_s``
after the last local user, and ``_sid`` (local table -> shared cache +
``acquire`` -> ``open``). Separate from ``frontend`` because it is the
session lifetime, not the attach or request path; it only talks to the
backend through the frontend's ``_request`` and control socket.

The mixin uses the ``Frontend`` state it is mixed into: ``stats``,
``linger_s``, ``control_timeout_s``, ``last_detach_reason``, ``_handles``,
``_reaper_running``, ``_att``, ``_ids``, ``_token`` and the methods
``start``, ``_request`` and ``_detach``.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

import trio

from . import _control
from ._inline import InlineOpError, InlineSession
from ._layout import SessionMeta

if TYPE_CHECKING:
    from .frontend import _Attachment


class EngineUnavailable(Exception):
    """Neither the engine nor an in-process fallback can run this request
    (e.g. a keyless session while the backend is down)."""


class EngineSession:
    """A frontend's handle on a session (see the module docstring)."""

    __slots__ = ("meta", "canonical", "md5", "local_refs", "idle_since", "sid", "gen",
                 "rejected_gen", "lock", "_inline")

    def __init__(self, meta: SessionMeta):
        self.meta = meta
        self.canonical = meta.canonical()
        self.md5 = meta.digest()
        self.local_refs = 0
        self.idle_since = 0.0
        self.sid = 0
        self.gen = -1       # attachment generation the sid belongs to
        self.rejected_gen = -1  # attachment whose device refused this session
        self.lock = trio.Lock()
        self._inline: InlineSession | None = None

    def inline(self) -> InlineSession:
        if self._inline is None:
            try:
                self._inline = InlineSession(self.meta)
            except InlineOpError as exc:
                raise EngineUnavailable(f"no in-process fallback: {exc}") from exc
        return self._inline


class _SessionHandles:
    """Mixin of ``Frontend``: the session handle table and its reaper."""

    async def open_session(self, meta: SessionMeta) -> EngineSession:
        """A handle on the session for ``meta`` (+1 local reference)."""
        if self._token is not trio.lowlevel.current_trio_token():
            await self.start()
        canonical = meta.canonical()
        h = self._handles.get(canonical)
        if h is None:
            h = self._handles[canonical] = EngineSession(meta)
        else:
            self.stats.local_hits += 1
        h.local_refs += 1
        return h

    async def close_session(self, h: EngineSession, *, linger: bool = True) -> None:
        """-1 local reference. At zero the backend reference is dropped after
        ``linger_s`` (``linger=False``: at once, for sessions nobody else
        will reuse, such as a connection's traffic keys)."""
        h.local_refs -= 1
        if h.local_refs > 0:
            return
        h.idle_since = time.monotonic()
        if not linger or self.linger_s <= 0:
            await self._release(h)
        elif not self._reaper_running:
            self._reaper_running = True
            trio.lowlevel.spawn_system_task(self._reaper)

    def release_soon(self, h: EngineSession) -> None:
        """Sync -1 local reference (for finalizers): released by the reaper
        task without lingering."""
        h.local_refs -= 1
        if h.local_refs > 0:
            return
        h.idle_since = float("-inf")
        if not self._reaper_running:
            try:
                trio.lowlevel.spawn_system_task(self._reaper)
                self._reaper_running = True
            except RuntimeError:  # not inside this trio run: the next close reaps it
                pass

    async def _reaper(self) -> None:
        try:
            while True:
                now = time.monotonic()
                for h in list(self._handles.values()):
                    if h.local_refs == 0 and now - h.idle_since >= self.linger_s:
                        await self._release(h)
                if not any(h.local_refs == 0 for h in self._handles.values()):
                    break
                await trio.sleep(max(self.linger_s / 2, 0.01))
        finally:
            self._reaper_running = False

    async def _release(self, h: EngineSession) -> None:
        if self._handles.get(h.canonical) is h:
            del self._handles[h.canonical]
        att = self._att
        if att is not None and att.alive and h.gen == att.gen:
            h.gen = -1
            # Fire and forget: the reply (matched to no waiter) is dropped.
            # Shielded: the handle is already out of the table, so a release
            # cut off by the caller's cancellation would leak the backend's
            # (and the host's) session for good. Bounded all the same.
            try:
                with trio.CancelScope(shield=True), trio.move_on_after(self.control_timeout_s):
                    async with att.send_lock:
                        await att.sock.send(_control.encode(
                            {"t": "release", "sid": h.sid, "id": next(self._ids)}))
            except (OSError, trio.ClosedResourceError) as exc:
                self.last_detach_reason = f"release send: {exc!r}"
                self._detach(att)

    async def _sid(self, att: _Attachment, h: EngineSession) -> int:
        """The backend session id of ``h`` in this attachment (+1 backend ref once)."""
        if h.gen == att.gen:
            return h.sid
        async with h.lock:
            if h.gen == att.gen:
                return h.sid
            sid = att.shared.lookup(h.canonical, h.md5)
            reply = None
            if sid is not None:
                reply = await self._request(att, {"t": "acquire", "sid": sid, "md5": h.md5.hex()})
                if reply.get("ok"):
                    self.stats.shared_hits += 1
                else:
                    reply = None
            if reply is None:
                reply = await self._request(att, {"t": "open", "meta": h.canonical.hex()})
                self.stats.backend_opens += 1
                if not reply.get("ok"):
                    raise EngineUnavailable(f"backend refused session: {reply.get('detail')}")
            h.sid, h.gen = int(reply["sid"]), att.gen
            return h.sid

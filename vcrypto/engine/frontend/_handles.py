"""The frontend's session handles: the local handle table, its lingering
release and the reaper task (DESIGN §5, the frontend side).

``Frontend`` (``_frontend``) owns one ``SessionHandles``; its module
docstring tells the whole story ("Sessions:"). Here: ``EngineSession`` (one
handle per canonical metadata, local refcount, the backend sid valid for
one attachment generation), ``open``/``close``/``release_soon``, the reaper
that drops the backend reference ``linger_s`` after the last local user,
and ``sid`` (local table -> shared cache + ``acquire`` -> ``open``).
Separate from ``_frontend`` because it is the session lifetime, not the
attach or request path. It reaches the backend only through the frontend's
public control calls: ``attachment`` (the live one, if any),
``control_request`` (a round trip) and ``control_send`` (fire and forget).
"""
from __future__ import annotations

import hashlib
import time
from typing import Protocol

import trio

from ..contract import InlineOpError, InlineSession, SessionMeta
from ._attachment import Attachment
from ._stats import FrontendStats


class ControlChannel(Protocol):
    """What the handle table needs of its frontend (``Frontend`` is one)."""

    @property
    def attachment(self) -> Attachment | None: ...

    async def control_request(self, att: Attachment, msg: dict) -> dict: ...

    async def control_send(self, att: Attachment, msg: dict) -> None: ...


class EngineUnavailable(Exception):
    """Neither the engine nor an in-process fallback can run this request
    (e.g. a keyless session while the backend is down)."""


class EngineSession:
    """A frontend's handle on a session (see the module docstring)."""

    __slots__ = ("meta", "canonical", "md5", "sha256", "local_refs", "idle_since", "sid", "gen",
                 "rejected_gen", "lock", "_inline")

    def __init__(self, meta: SessionMeta):
        self.meta = meta
        self.canonical = meta.canonical()
        # Only shareable sessions are in the shared cache (SessionMeta.shareable):
        # a connection's traffic key needs no digests (never looked up).
        if meta.shareable:
            self.md5 = hashlib.md5(self.canonical, usedforsecurity=False).digest()
            self.sha256 = hashlib.sha256(self.canonical).digest()
        else:
            self.md5 = self.sha256 = None
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


class SessionHandles:
    """The session handle table of one ``Frontend`` and its reaper."""

    def __init__(self, frontend: ControlChannel, stats: FrontendStats, linger_s: float):
        self._frontend = frontend
        self._stats = stats
        self.linger_s = linger_s
        self._table: dict[bytes, EngineSession] = {}
        self._reaper_running = False

    def __len__(self) -> int:
        return len(self._table)

    def open(self, meta: SessionMeta) -> EngineSession:
        """A handle on the session for ``meta`` (+1 local reference)."""
        canonical = meta.canonical()
        h = self._table.get(canonical)
        if h is None:
            h = self._table[canonical] = EngineSession(meta)
        else:
            self._stats.local_hits += 1
        h.local_refs += 1
        return h

    async def close(self, h: EngineSession, *, linger: bool = True) -> None:
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

    def forget_attachment(self) -> None:
        """The attachment belonged to another trio run or process: every sid
        is void, and the old run's locks and reaper with it."""
        for h in self._table.values():
            h.gen = -1
            h.lock = trio.Lock()
        self._reaper_running = False

    def clear(self) -> None:
        self._table.clear()

    async def _reaper(self) -> None:
        try:
            while True:
                now = time.monotonic()
                for h in list(self._table.values()):
                    if h.local_refs == 0 and now - h.idle_since >= self.linger_s:
                        await self._release(h)
                if not any(h.local_refs == 0 for h in self._table.values()):
                    break
                await trio.sleep(max(self.linger_s / 2, 0.01))
        finally:
            self._reaper_running = False

    async def _release(self, h: EngineSession) -> None:
        if self._table.get(h.canonical) is h:
            del self._table[h.canonical]
        att = self._frontend.attachment
        if att is not None and h.gen == att.gen:
            h.gen = -1
            # Fire and forget: the reply (matched to no waiter) is dropped.
            await self._frontend.control_send(att, {"t": "release", "sid": h.sid})

    async def sid(self, att: Attachment, h: EngineSession) -> int:
        """The backend session id of ``h`` in this attachment (+1 backend ref once)."""
        if h.gen == att.gen:
            return h.sid
        async with h.lock:
            if h.gen == att.gen:
                return h.sid
            request = self._frontend.control_request
            sid = (att.shared.cache.lookup(h.canonical, h.md5, h.sha256)
                   if h.sha256 is not None else None)
            reply = None
            if sid is not None:
                reply = await request(att, {"t": "acquire", "sid": sid, "meta": h.canonical.hex()})
                if reply.get("ok"):
                    self._stats.shared_hits += 1
                else:
                    reply = None
            if reply is None:
                reply = await request(att, {"t": "open", "meta": h.canonical.hex()})
                self._stats.backend_opens += 1
                if not reply.get("ok"):
                    raise EngineUnavailable(f"backend refused session: {reply.get('detail')}")
            h.sid, h.gen = int(reply["sid"]), att.gen
            return h.sid

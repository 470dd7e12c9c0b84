"""``RecordProtector``: the record layer's protection half, owned by ``TLSStream``.

It holds the current read and write ``Protection`` (TLS 1.3, ``_record``) or
``Protection12`` (``_record12``) — both with the same small interface:
``seal_item``, ``wire_prefix``, ``open_item``, ``content``, ``seq``,
``session``, ``type_byte_len``, ``tls12`` — plus the sealed bytes waiting for
the transport, and runs every per-record provider call:

- ``seal(items)``: seal ``(nonce, aad, plaintext)`` items into the wire
  buffer in batches of <= ``pipeline_depth`` (one ``seal_many`` await per
  batch); items whose content is below ``small_record_threshold_bytes`` are
  sealed in-process with the session's sync ``seal``;
- ``seal_now(type, content)``: one record sealed in-process at once (a fatal
  alert: the provider may be the very thing that failed);
- ``open_batch(records)``: a run of application records with ``open_many``,
  None if any fails to open (the caller reopens one by one for the exact
  error or key change); ``open_one(type, header, payload)``: one record;
- ``install(direction, protection)`` swaps keys and closes the superseded
  AEAD session; ``release()`` closes the current ones, once (stream over).

What it does not know: handshake state, KeyUpdate policy, fragmenting data
into records, and the transport — the stream decides those and hands over
items or takes the sealed bytes (``take_wire``). Provider calls go through
the ``provider_op`` callable the stream gives it (which maps a provider's
failure to ``CryptoProviderError`` and a cancellation to a broken stream).
"""
from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio

from ._errors import BadRecordMac
from ._record import TAG_LEN

#: Bound on closing one AEAD session (shielded: a cancelled close must still release).
RELEASE_S = 1.0


class RecordProtector:
    __slots__ = ("read", "write", "wire", "released", "_threshold", "_depth", "_op")

    def __init__(self, small_record_threshold_bytes: int, pipeline_depth: int,
                 provider_op: Callable[[Awaitable, str], Awaitable]):
        self.read = None            # Protection | Protection12 | None (plaintext)
        self.write = None
        self.wire = bytearray()     # sealed records waiting for the transport
        self.released = False       # current AEAD sessions closed: no new ones
        self._threshold = small_record_threshold_bytes
        self._depth = pipeline_depth
        self._op = provider_op

    # ---- keys ---------------------------------------------------------------

    async def install(self, direction: str, protection) -> None:
        """Switch one direction's keys; the old session is closed."""
        if self.released:
            await _close_session(protection.session)
            raise trio.ClosedResourceError("TLSStream was closed")
        # No await between the check and the swap: ``release`` sees either the
        # old protection or the new one, never neither.
        if direction == "write":
            old, self.write = self.write, protection
        else:
            old, self.read = self.read, protection
        if old is not None:
            await _close_session(old.session)

    async def release(self) -> None:
        """Close the current read/write AEAD sessions, once.

        Not left to the provider's finalizers: a vcrypto session holds a host
        session until it is closed, and GC may come much later.
        """
        if self.released:
            return
        self.released = True
        for p in (self.read, self.write):
            if p is not None:
                await _close_session(p.session)

    # ---- sealing --------------------------------------------------------------

    def take_wire(self) -> bytearray:
        """The sealed bytes so far; a new buffer starts (no copy: the caller owns it)."""
        data, self.wire = self.wire, bytearray()
        return data

    def seal_now(self, content_type: int, content: bytes) -> None:
        item = self.write.seal_item(content_type, content)
        self.wire += self.write.wire_prefix(item) + self.write.session.seal(*item)

    async def seal(self, items) -> None:
        if not items:
            return
        write = self.write
        session = write.session
        threshold = self._threshold
        if not threshold and len(items) <= self._depth:
            # The usual case (a handshake flight, a response): one provider batch.
            sealed = await self._op(session.seal_many(items), "seal")
            self._queue(write, items, sealed)
            return
        depth = self._depth
        sealed: list[bytes | None] = [None] * len(items)
        threshold += write.type_byte_len  # (content + the TLS 1.3 type byte)
        batch_idx = []
        for i, (nonce, aad, inner) in enumerate(items):
            if len(inner) < threshold:
                sealed[i] = session.seal(nonce, aad, inner)
            else:
                batch_idx.append(i)
        for start in range(0, len(batch_idx), depth):
            idx = batch_idx[start:start + depth]
            out = await self._op(session.seal_many([items[i] for i in idx]), "seal")
            for i, ct in zip(idx, out):
                sealed[i] = ct
        self._queue(write, items, sealed)

    def _queue(self, write, items, sealed) -> None:
        """Append the sealed records to the wire buffer: one exact-size buffer
        and one copy (growing a bytearray record by record reallocates and
        faults in pages again and again). Called after the last await: the
        stream may have taken the previous buffer meanwhile."""
        parts = [self.wire] if self.wire else []
        prefix = write.wire_prefix
        for item, ct in zip(items, sealed):
            parts.append(prefix(item))
            parts.append(ct)
        self.wire = bytearray().join(parts)

    # ---- opening --------------------------------------------------------------

    def _in_process(self, read, ciphertext: bytes) -> bool:
        return len(ciphertext) - TAG_LEN - read.type_byte_len < self._threshold

    async def open_one(self, content_type: int, header: bytes, payload: bytes) -> tuple[int, bytes]:
        """Open one record under the read key: ``(content_type, content)``."""
        read = self.read
        item = read.open_item(read.seq, header, payload)
        if self._in_process(read, item[2]):
            inner = read.session.open(*item)
        else:
            inner = (await self._op(read.session.open_many([item]), "open"))[0]
        read.seq += 1
        return read.content(content_type, inner)

    async def open_batch(self, records) -> list[bytes] | None:
        """Open application records under the read key: their plaintexts (for
        ``read.content``, record by record), or None if any fails to open."""
        read = self.read
        base = read.seq
        batch = []
        try:
            items = [read.open_item(base + i, header, payload)
                     for i, (_, header, payload) in enumerate(records)]
            out: list[bytes | None] = [None] * len(items)
            for i, item in enumerate(items):
                if self._in_process(read, item[2]):
                    out[i] = read.session.open(*item)
                else:
                    batch.append(i)
            for start in range(0, len(batch), self._depth):
                idx = batch[start:start + self._depth]
                opened = await self._op(read.session.open_many([items[i] for i in idx]), "open")
                for i, pt in zip(idx, opened):
                    out[i] = pt
        except BadRecordMac:
            return None
        read.seq = base + len(items)
        return out


async def _close_session(session) -> None:
    # Shielded (a cancelled close must still release) yet bounded (a provider
    # that hangs must not hang the close); a failure to release is the
    # provider's to log, never an error of the stream that is going away.
    # A session with nothing to release (every in-process one) skips both:
    # a trio cancel scope costs ~10 µs here, and a connection retires four keys.
    if not getattr(session, "needs_aclose", True):
        return
    with trio.move_on_after(RELEASE_S, shield=True):
        try:
            await session.aclose()
        except Exception:
            pass

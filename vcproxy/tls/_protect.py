"""Record protection for ``TLSStream``: sealing outgoing records in batches
and opening incoming ones in batches.

``TLSStream`` (``_stream``) mixes this in. Here is the half of the record
layer that talks to the provider per record: cutting data into full records,
sealing them into ``_wire_out`` in batches of <= ``pipeline_depth`` (one
``seal_many`` await per batch; records below ``small_record_threshold_bytes``
sealed in-process with the sync ``seal``), the NewSessionTicket riding in the
first application batch, the KeyUpdate after ``key_update_after_records``,
and opening a run of application records with ``open_many``. Separate from
``_stream`` because it is the per-record hot path and its batching policy,
while ``_stream`` keeps the stream's state, handshake driving, record
dispatch and failure handling (its theory-of-operation docstring covers both).

The mixin uses the ``TLSStream`` state it is mixed into: ``config``,
``transport_stream``, ``_hs``, ``_read``, ``_write``, ``_hs_out``,
``_wire_out``, ``_max_fragment`` and the methods ``_execute`` and
``_provider_op``.
"""
from __future__ import annotations

from ._errors import BadRecordMac
from ._record import ALERT, APPLICATION_DATA, HANDSHAKE, MAX_PLAINTEXT, TAG_LEN, record_header


class _RecordProtection:
    """Mixin of ``TLSStream``: batched record seal (send) and open (receive)."""

    # ---- sending ------------------------------------------------------------

    async def _seal_handshake_out(self) -> None:
        if not self._hs_out:
            return
        data = bytes(self._hs_out)
        self._hs_out.clear()
        if self._write is None:
            for i in range(0, len(data), MAX_PLAINTEXT):
                chunk = data[i:i + MAX_PLAINTEXT]
                self._wire_out += record_header(HANDSHAKE, len(chunk)) + chunk
        else:
            await self._seal_records(HANDSHAKE, data)

    async def _seal_records(self, content_type: int, data: bytes) -> None:
        """Seal ``data`` into full records under the write key, into ``_wire_out``."""
        frag = self._max_fragment
        limit = 0
        if content_type == APPLICATION_DATA and not self._write.tls12:  # (TLS 1.2: no KeyUpdate)
            limit = self.config.key_update_after_records
            if self._hs.key_update_owed:
                await self._execute(self._hs.initiate_key_update())
        items = []
        if self._owed_alerts:  # a warning the receiving task could not send itself
            for alert in self._owed_alerts:
                items.append(self._write.seal_item(ALERT, alert))
            self._owed_alerts.clear()
        if self._hs_out and content_type != HANDSHAKE:
            # Handshake bytes still queued (the NewSessionTicket after the
            # handshake) go first, in this same batch: one provider round trip.
            queued = bytes(self._hs_out)
            self._hs_out.clear()
            for pos in range(0, len(queued), frag):
                items.append(self._write.seal_item(HANDSHAKE, queued[pos:pos + frag]))
        view = memoryview(data)  # record slices without a copy each (seal_item copies once)
        for pos in range(0, len(data), frag):
            if limit and self._write.seq >= limit:
                await self._seal_items(items)
                items = []
                await self._execute(self._hs.initiate_key_update())
            items.append(self._write.seal_item(content_type, view[pos:pos + frag]))
        await self._seal_items(items)

    async def _seal_items(self, items) -> None:
        if not items:
            return
        session = self._write.session
        threshold = self.config.small_record_threshold_bytes
        if not threshold and len(items) <= self.config.pipeline_depth:
            # The usual case (a handshake flight, a response): one provider batch.
            sealed = await self._provider_op(session.seal_many(items), "seal")
            self._queue_sealed(items, sealed)
            return
        depth = self.config.pipeline_depth
        sealed: list[bytes | None] = [None] * len(items)
        threshold += self._write.type_byte_len
        batch_idx = []
        for i, (nonce, aad, inner) in enumerate(items):
            if len(inner) < threshold:  # (content + type byte, if any, < T + type byte)
                sealed[i] = session.seal(nonce, aad, inner)
            else:
                batch_idx.append(i)
        for start in range(0, len(batch_idx), depth):
            idx = batch_idx[start:start + depth]
            out = await self._provider_op(session.seal_many([items[i] for i in idx]), "seal")
            for i, ct in zip(idx, out):
                sealed[i] = ct
        self._queue_sealed(items, sealed)

    def _queue_sealed(self, items, sealed) -> None:
        """Append the sealed records to ``_wire_out``: one exact-size buffer
        and one copy (growing a bytearray record by record reallocates and
        faults in pages again and again). Called after the last await:
        ``_flush`` may have handed the previous buffer to the transport."""
        parts = [self._wire_out] if self._wire_out else []
        prefix = self._write.wire_prefix
        for item, ct in zip(items, sealed):
            parts.append(prefix(item))
            parts.append(ct)
        self._wire_out = bytearray().join(parts)

    async def _flush(self) -> None:
        await self._seal_handshake_out()
        if self._wire_out:
            # Hand the buffer itself to the transport and start a new one: no
            # copy (bytes() of a 256 KiB bytearray, then clear(), measured
            # ~20 us per 16 KiB record here). Nothing else holds the old
            # buffer: writers read ``_wire_out`` only between awaits.
            data, self._wire_out = self._wire_out, bytearray()
            await self.transport_stream.send_all(data)
    # ---- receiving ----------------------------------------------------------

    async def _open_batch(self, records) -> list[bytes] | None:
        """Open records under the current read key; None if any fails to open."""
        read = self._read
        threshold = self.config.small_record_threshold_bytes + read.type_byte_len + TAG_LEN
        base = read.seq
        batch = []
        try:
            items = [read.open_item(base + i, header, payload)
                     for i, (_, header, payload) in enumerate(records)]
            out: list[bytes | None] = [None] * len(items)
            for i, item in enumerate(items):
                if len(item[2]) < threshold:
                    out[i] = read.session.open(*item)
                else:
                    batch.append(i)
            for start in range(0, len(batch), self.config.pipeline_depth):
                idx = batch[start:start + self.config.pipeline_depth]
                opened = await self._provider_op(read.session.open_many([items[i] for i in idx]),
                                                 "open")
                for i, pt in zip(idx, opened):
                    out[i] = pt
        except BadRecordMac:
            return None
        read.seq = base + len(items)
        return out

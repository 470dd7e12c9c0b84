"""TLSStream: the trio adapter around the sans-IO handshake and record layer.

Theory of operation
-------------------
``TLSStream`` owns three sans-IO parts and one provider:

- ``RecordSplitter`` cuts transport bytes into records;
- ``HandshakeReassembler`` cuts handshake records into messages;
- ``ServerHandshake`` (``_handshake``) turns messages into commands;
- the ``CryptoProvider`` runs every key exchange, signature and record
  seal/open (``_provider`` documents the seam).

Handshake: read one record at a time (keys may change after any message),
feed whole messages to the state machine, execute its commands in order
(a ``DeriveAndSign`` is one ``provider.derive_and_sign`` call, which a
remote provider submits as one batch: ``_derive_and_sign``).
Handshake bytes for one epoch are queued and sealed together when the write
epoch changes or before we wait for the peer, so the server flight
EncryptedExtensions..Finished leaves as one record. NewSessionTicket is
queued (not sealed) at the end of the handshake and is sealed in the same
provider batch as the first ``send_all``'s records (or the close_notify):
the handshake never waits on it and it costs no provider round trip of its own.

Records: ``send_all`` (and the no-I/O ``write`` before it: a cork, so
headers and body written together leave in one record; corked data still
queued at ``aclose`` leaves with the close_notify) cuts data into full
records (2^14, or the client's record_size_limit - 1) and seals them in
batches of ≤ ``pipeline_depth`` with one ``seal_many`` await per batch;
records with less plaintext than ``small_record_threshold_bytes`` are sealed
in-process with the session's sync ``seal``. ``receive_some`` opens all
buffered records in one ``open_many`` batch; if the batch fails (a KeyUpdate
inside it switched keys, or a bad record) it reopens record by record, which
either applies the key change or raises ``BadRecordMac`` at the bad one.
(The batched seal/open code is ``_protect.RecordProtector``, a part the
stream owns with its own state — keys, sequence numbers, the sealed bytes
waiting for the transport; record dispatch and the stream's state stay here.)
``send_all_within(data, timeout_s)`` is ``send_all`` bounded in time
(``trio.TooSlowError``) without a CancelScope when nothing waits: on an open
stream with nothing else to send first, the provider ops of its records (large
ones: small records are sealed in-process) are bounded by a scope each and
the transport's wait by the transport's own ``send_all_within``; else the whole
call runs in one deadline scope. (A trio scope costs ~5 µs, more than sealing
and sending a small response.)
After ``key_update_after_records`` records under one key, the server sends a
KeyUpdate and switches its write key; a KeyUpdate the client requested is sent
before our next application data (RFC 8446 §4.6.3), by the sending task.

State: HANDSHAKING → OPEN (once our last handshake flight, TLS 1.2's CCS and
Finished, has been handed to the transport) (→ READ_CLOSED once the peer's
close_notify or EOF arrived: we may still send) → CLOSED, or BROKEN after a
failure. A TLS failure raises the ``TLSError`` (with its alert); a peer fault
first sends our alert, then closes lingeringly (send EOF, drain briefly,
close) so a TCP reset does not destroy the alert before the client reads it.
Transport failures surface as trio's ``BrokenResourceError``. A transport EOF
without close_notify reads as EOF unless ``strict_close_notify`` (like
``trio.SSLStream``'s ``https_compatible``: HTTP framing already detects
truncation).

AEAD sessions are provider resources (for vcrypto a host session only with
the engine-backend's ``--aead-sessions``; by default the key travels
stateless in each request and closing is local): each one
is closed exactly once by the stream: a superseded key (handshake → traffic,
KeyUpdate) when it is replaced, the current read/write keys when the stream
closes or breaks (``_release_keys``; shielded, bounded, never raising).
"""
from __future__ import annotations

import collections
import enum
import operator
import time

import trio

from ._codec import HandshakeReassembler
from ._config import ServerConfig
from ._errors import (
    AlertDescription, BadRecordMac, CryptoProviderError, DecodeError, HandshakeTimeout,
    RecordOverflow, TLSAlertReceived, TLSError, TLSUsageError, UnexpectedMessage,
)
from ._handshake import (
    DeriveAndSign, Epoch, HandshakeComplete, HandshakeInfo, InstallKeys, KeyExchange,
    SendChangeCipherSpec, SendHandshake, ServerHandshake, Sign, SkipEarlyData,
)
from ._handshake12 import InstallRecordKeys, SendAlert
from ._keyschedule import traffic_key_iv
from ._protect import RecordProtector
from ._provider import CryptoProvider
from ._record import (
    ALERT, APPLICATION_DATA, CHANGE_CIPHER_SPEC, HANDSHAKE, MAX_PLAINTEXT, Protection,
    RecordSplitter, record_header,
)
from ._record12 import Protection12

RECEIVE_SIZE_BYTES = 65536
LINGER_S = 1.0
LINGER_DRAIN_BYTES = 1 << 18
_CCS_RECORD = b"\x14\x03\x03\x00\x01\x01"


class _State(enum.Enum):
    HANDSHAKING = "handshaking"
    OPEN = "open"
    #: Open, and the peer sent close_notify (or EOF): we may still send;
    #: ``receive_some`` returns b"" from now on.
    READ_CLOSED = "read_closed"
    BROKEN = "broken"
    CLOSED = "closed"


_OPEN_STATES = (_State.OPEN, _State.READ_CLOSED)


class TLSStream(trio.abc.Stream):
    """A server-side TLS 1.3 / TLS 1.2 stream over ``transport_stream``."""

    def __init__(self, transport_stream: trio.abc.Stream, config: ServerConfig,
                 provider: CryptoProvider, *, strict_close_notify: bool = False):
        self.transport_stream = transport_stream
        self.config = config
        self.provider = provider
        self.strict_close_notify = strict_close_notify
        self._hs = ServerHandshake(config, random_bytes=provider.random_bytes, now_s=time.time,
                                   key_share=provider.key_share)
        self._state = _State.HANDSHAKING
        self._splitter = RecordSplitter()
        self._reassembler = HandshakeReassembler(config.max_handshake_message_bytes)
        self._records = RecordProtector(config.small_record_threshold_bytes,
                                        config.pipeline_depth, self._provider_op)
        self._read_epoch = Epoch.INITIAL
        self._write_epoch = Epoch.INITIAL
        self._hs_messages: collections.deque[tuple[Epoch, bytes]] = collections.deque()
        self._hs_out = bytearray()     # handshake bytes queued under the current write epoch
        self._app_in = bytearray()
        self._pending_app = bytearray()
        self._owed_alerts: list[bytes] = []  # warnings for the next sender (TLS 1.2)
        self._max_fragment = MAX_PLAINTEXT
        self._skip_early_bytes = 0
        self._skip_early_encrypted = False
        self._handshake_done: trio.Event | None = None
        # (concurrency guards, not lifecycle: trio streams refuse a second
        # concurrent sender or receiver)
        self._sending = False
        self._warning_sent: trio.Event | None = None  # set while _send_warning sends
        self._receiving = False
        self._send_deadline: float | None = None  # set while a send_all_within runs lazily
        self.info: HandshakeInfo | None = None
        self.server_name: str | None = None
        self.alpn_protocol: str | None = None
        self.cipher_suite: str | None = None
        self.version: str | None = None
        self.resumed = False
        self.named_group: str | None = None

    # ---- public API ---------------------------------------------------------

    async def do_handshake(self) -> None:
        """Run the handshake (once; later or concurrent calls wait for its end)."""
        if self._state in _OPEN_STATES:
            await trio.lowlevel.checkpoint()
            return
        if self._handshake_done is not None:  # another task is running it
            await self._handshake_done.wait()
            self._check_usable()
            return
        self._check_usable()
        self._handshake_done = trio.Event()
        timeout_s = self.config.handshake_timeout_s
        try:
            # A bare CancelScope, not fail_after: this runs once per connection
            # and the context-manager wrapper costs more than the scope itself.
            with trio.CancelScope(deadline=trio.current_time() + timeout_s) as scope:
                await self._handshake()
            if scope.cancelled_caught:
                exc = HandshakeTimeout(f"handshake not done within handshake_timeout_s={timeout_s}")
                # (force: a provider op cut off by the timeout already marked
                # the stream BROKEN, yet the timeout still closes it)
                await self._fail(exc, send_alert=False, force=True)
                raise exc
        except TLSError as exc:
            await self._fail(exc)
            raise
        except BaseException:
            if self._state is not _State.CLOSED:  # (closed by another task meanwhile)
                self._state = _State.BROKEN
            raise
        finally:
            self._handshake_done.set()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Queue application data without I/O; the next ``send_all`` sends it too."""
        if self._state in (_State.BROKEN, _State.CLOSED):
            self._check_usable()
        self._pending_app += data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._state is _State.HANDSHAKING:
            await self.do_handshake()
        self._check_usable()
        while self._sending:
            if self._warning_sent is None:
                raise trio.BusyResourceError("another task is already sending on this TLSStream")
            await self._warning_sent.wait()  # the receiving task's warning: ours goes next
            self._check_usable()
        self._sending = True
        if self._pending_app:  # write() queued some: one buffer, one record stream
            self._pending_app += data
            data = bytes(self._pending_app)
            self._pending_app.clear()
        elif data.__class__ is not bytes:
            data = bytes(data)  # the caller may reuse its buffer once we return
        try:
            if not data:
                await trio.lowlevel.checkpoint()  # trio: every send_all is a checkpoint
            await self._seal_records(APPLICATION_DATA, data)
            await self._flush()
        except TLSError as exc:
            self._sending = False  # this task is the sender: the alert may go out
            await self._fail(exc)
            raise
        except BaseException:
            self._state = _State.BROKEN
            raise
        finally:
            self._sending = False

    async def send_all_within(self, data: bytes | bytearray | memoryview, timeout_s: float) -> None:
        """``send_all``, raising ``trio.TooSlowError`` once ``timeout_s`` has
        passed since the call (see the theory of operation)."""
        deadline = trio.current_time() + timeout_s
        write = self._records.write
        if (self._state not in _OPEN_STATES or self._sending or self._hs_out or self._owed_alerts
                or write is None or self._hs.key_update_owed
                or not hasattr(self.transport_stream, "send_all_within")
                or (not write.tls12 and self.config.key_update_after_records
                    and write.seq + (len(data) + len(self._pending_app)) // self._max_fragment + 2
                    >= self.config.key_update_after_records)):
            with trio.CancelScope(deadline=deadline) as scope:
                await self.send_all(data)
            if scope.cancelled_caught:
                raise trio.TooSlowError
            return
        self._send_deadline = deadline
        try:
            await self.send_all(data)
        finally:
            self._send_deadline = None

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport_stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if max_bytes is not None:
            max_bytes = operator.index(max_bytes)
            if max_bytes < 1:
                raise ValueError("max_bytes must be >= 1")
        if self._state is _State.HANDSHAKING:
            await self.do_handshake()
        self._check_usable()
        if self._receiving:
            raise trio.BusyResourceError("another task is already receiving on this TLSStream")
        self._receiving = True
        try:
            if self._app_in or self._state is not _State.OPEN:
                await trio.lowlevel.checkpoint()  # trio: every receive_some is a checkpoint
            while not self._app_in and self._state is _State.OPEN:
                await self._pump_application_records()
        except TLSError as exc:
            await self._fail(exc)
            raise
        finally:
            self._receiving = False
        if not self._app_in:
            self._check_usable()  # closed or broken by another task meanwhile: not an EOF
            return b""
        if max_bytes is None or max_bytes >= len(self._app_in):
            out = bytes(self._app_in)
            self._app_in.clear()
            return out
        out = bytes(self._app_in[:max_bytes])
        del self._app_in[:max_bytes]
        return out

    async def aclose(self) -> None:
        """Send what ``write`` queued and close_notify (when open), then close the transport.

        The queued data and the alert leave in one transport write: a
        response corked with ``write`` just before closing costs no segment
        (nor peer wake-up) of its own.
        """
        if self._state is _State.CLOSED:
            await trio.lowlevel.checkpoint()
            return
        was_open = self._state in _OPEN_STATES
        self._state = _State.CLOSED
        try:
            # (not while another task is mid-send: its records would interleave)
            if was_open and self._records.write is not None and not self._sending:
                with trio.move_on_after(LINGER_S):
                    if self._pending_app:
                        data = bytes(self._pending_app)
                        self._pending_app.clear()
                        await self._seal_records(APPLICATION_DATA, data)
                    await self._seal_records(ALERT, bytes((1, AlertDescription.close_notify)))
                    await self._flush()
        except (TLSError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the peer went away first: nothing left to tell it
        finally:
            try:
                await self._records.release()
            finally:
                await trio.aclose_forcefully(self.transport_stream)

    # ---- handshake ----------------------------------------------------------

    async def _handshake(self) -> None:
        while self._state is _State.HANDSHAKING and self.info is None:
            epoch, message = await self._next_handshake_message()
            if epoch is Epoch.INITIAL and self._hs.version != "1.2" \
                    and (self._hs_messages or self._reassembler.pending):
                # RFC 8446 §5.1: keys change after a ClientHello, so nothing may
                # follow it in its record. Refused before anything is sent.
                raise UnexpectedMessage("data after the ClientHello in its record")
            await self._execute(self._hs.receive_message(epoch, message))
        if self._hs.version == "1.2":
            # TLS 1.2: our CCS and Finished end the handshake; the client
            # waits for them before it sends data (no early flush, no deadlock).
            await self._flush()
        if self._state is _State.HANDSHAKING:  # (not over a concurrent aclose)
            # OPEN only now that our last flight is with the transport: until
            # then this task is its sender: another task's send_all or
            # receive_some (which may write a renegotiation warning) waits for
            # the handshake, and aclose sends no close_notify, instead of
            # writing into the transport concurrently (BusyResourceError).
            self._state = _State.OPEN
        # TLS 1.3: the session tickets stay queued in _hs_out: _seal_records seals them
        # in the same provider batch as our first write (or close_notify), so
        # they cost no round trip of their own, leave in one segment with the
        # data, and a handshake never blocks on a peer that is not reading yet.

    async def _next_handshake_message(self) -> tuple[Epoch, bytes]:
        while not self._hs_messages:
            record = self._splitter.next_record()
            if record is None:
                if self._hs_out or self._records.wire:  # (no coroutine for nothing to send)
                    await self._flush()  # the peer may be waiting for our flight
                if not await self._read_transport():
                    raise trio.BrokenResourceError("peer closed the connection during the handshake")
                continue
            await self._process_record(*record)
        return self._hs_messages.popleft()

    async def _execute(self, commands) -> None:
        # A blocking command (KeyExchange, Sign) is always the last of its
        # list, so its follow-up commands run in a nested call: no queue.
        for cmd in commands:
            kind = type(cmd)
            if kind is SendHandshake:
                if cmd.epoch is not self._write_epoch:
                    raise TLSUsageError(f"handshake bytes for {cmd.epoch.name} under "
                                        f"{self._write_epoch.name} keys")
                self._hs_out += cmd.data
            elif kind is InstallKeys or kind is InstallRecordKeys:
                await self._install_keys(cmd)
            elif kind is SendAlert:
                await self._send_warning(bytes((cmd.level, cmd.description)))
            elif kind is KeyExchange:
                op = (self.provider.key_exchange(cmd.group, cmd.peer_public)
                      if cmd.private_key is None else  # TLS 1.2: the keyed form
                      self.provider.key_exchange(cmd.group, cmd.peer_public,
                                                 private_key=cmd.private_key))
                own_public, shared = await self._provider_op(op, "key exchange")
                await self._execute(self._hs.key_exchange_done(own_public, shared))
            elif kind is Sign:
                key = cmd.certificate.signing_key(self.provider)
                signature = await self._provider_op(
                    self.provider.sign(key, cmd.scheme, cmd.message), "sign")
                await self._execute(self._hs.signature_done(signature))
            elif kind is DeriveAndSign:
                shared, signature = await self._derive_and_sign(cmd)
                await self._execute(self._hs.derive_and_sign_done(shared, signature))
            elif kind is SendChangeCipherSpec:
                if self._hs_out:
                    await self._seal_handshake_out()
                self._records.wire += _CCS_RECORD
            elif kind is SkipEarlyData:
                self._skip_early_bytes = cmd.max_bytes
                self._skip_early_encrypted = cmd.encrypted
            elif kind is HandshakeComplete:
                self._complete(cmd.info)
            else:
                raise TLSUsageError(f"unknown command {cmd!r}")

    async def _derive_and_sign(self, cmd: DeriveAndSign) -> tuple[bytes, bytes]:
        """Both ops of a ``DeriveAndSign`` in one provider call (a remote
        provider submits both before awaiting either: one round trip)."""
        kx, sg = cmd.key_exchange, cmd.sign
        key = sg.certificate.signing_key(self.provider)
        return await self._provider_op(self.provider.derive_and_sign(
            kx.group, kx.peer_public, kx.private_key, key, sg.scheme, sg.message), "derive and sign")

    async def _provider_op(self, awaitable, what: str):
        if what == "seal" and self._send_deadline is not None:  # (a lazy send_all_within's)
            with trio.CancelScope(deadline=self._send_deadline) as scope:
                result = await self._provider_op_unbounded(awaitable, what)
            if scope.cancelled_caught:
                raise trio.TooSlowError
            return result
        return await self._provider_op_unbounded(awaitable, what)

    async def _provider_op_unbounded(self, awaitable, what: str):
        try:
            return await awaitable
        except TLSError:
            raise
        except trio.Cancelled:
            # Records handed to a provider that did not finish are lost: the
            # sequence numbers no longer line up, so the stream cannot go on.
            self._state = _State.BROKEN
            raise
        except Exception as exc:  # a provider's own failure type: ours is local
            raise CryptoProviderError(f"{self.provider.name}: {what} failed: {exc!r}") from exc

    async def _send_warning(self, alert: bytes) -> None:
        """Send a warning alert now, or leave it to the task that is sending
        (records of two tasks must not interleave)."""
        self._owed_alerts.append(alert)
        if self._sending or self._records.write is None:
            return
        self._sending = True
        # a send_all arriving meanwhile waits for this instead of failing busy
        self._warning_sent = done = trio.Event()
        try:
            await self._seal_records(ALERT, b"")  # (seals the owed alerts only)
            await self._flush()
        finally:
            self._sending = False
            self._warning_sent = None
            done.set()

    async def _install_keys(self, cmd: InstallKeys | InstallRecordKeys) -> None:
        if cmd.direction == "write" and self._hs_out:
            await self._seal_handshake_out()  # what was queued leaves under the old keys
        if self._records.released:
            # Another task closed the stream (and released its keys) while this
            # one was mid-handshake: no new session may outlive that.
            raise trio.ClosedResourceError("TLSStream was closed")
        if cmd.direction != "write" and self._reassembler.pending:
            # RFC 8446 §5.1: handshake messages MUST NOT span a key change.
            raise UnexpectedMessage("handshake message data left over at a key change")
        # From here to the swap there is no await: _release_keys sees either
        # the old protection or the new one, never neither.
        if type(cmd) is InstallRecordKeys:
            protection = Protection12(cmd.suite, self.provider.aead(cmd.suite.aead_alg, cmd.key),
                                      cmd.iv)
        else:
            key, iv = traffic_key_iv(cmd.suite, cmd.secret)
            session = self.provider.aead(cmd.suite.aead_alg, key)
            protection = Protection(cmd.suite, cmd.secret, session, iv)
        if cmd.direction == "write":
            self._write_epoch = cmd.epoch
            limit = self._hs.peer_record_size_limit
            if limit is not None:
                self._max_fragment = min(MAX_PLAINTEXT, limit - 1)
        else:
            self._read_epoch = cmd.epoch
        await self._records.install(cmd.direction, protection)

    def _complete(self, info: HandshakeInfo) -> None:
        self.info = info
        self.server_name, self.alpn_protocol = info.server_name, info.alpn_protocol
        self.cipher_suite, self.version = info.cipher_suite, info.version
        self.resumed, self.named_group = info.resumed, info.named_group
        self._skip_early_bytes = 0  # (the state turns OPEN at the end of _handshake)

    # ---- sending ------------------------------------------------------------

    async def _seal_handshake_out(self) -> None:
        if not self._hs_out:
            return
        data = bytes(self._hs_out)
        self._hs_out.clear()
        if self._records.write is None:
            for i in range(0, len(data), MAX_PLAINTEXT):
                chunk = data[i:i + MAX_PLAINTEXT]
                self._records.wire += record_header(HANDSHAKE, len(chunk)) + chunk
        else:
            await self._seal_records(HANDSHAKE, data)

    async def _seal_records(self, content_type: int, data: bytes) -> None:
        """Cut ``data`` into full records and seal them under the write key."""
        records = self._records
        frag = self._max_fragment
        limit = 0
        if content_type == APPLICATION_DATA and not records.write.tls12:  # (TLS 1.2: no KeyUpdate)
            limit = self.config.key_update_after_records
            if self._hs.key_update_owed:
                await self._execute(self._hs.initiate_key_update())
        items = []
        if self._owed_alerts:  # a warning the receiving task could not send itself
            for alert in self._owed_alerts:
                items.append(records.write.seal_item(ALERT, alert))
            self._owed_alerts.clear()
        if self._hs_out and content_type != HANDSHAKE:
            # Handshake bytes still queued (the NewSessionTicket after the
            # handshake) go first, in this same batch: one provider round trip.
            queued = bytes(self._hs_out)
            self._hs_out.clear()
            for pos in range(0, len(queued), frag):
                items.append(records.write.seal_item(HANDSHAKE, queued[pos:pos + frag]))
        view = memoryview(data)  # record slices without a copy each (seal_item copies once)
        for pos in range(0, len(data), frag):
            if limit and records.write.seq >= limit:
                await records.seal(items)
                items = []
                await self._execute(self._hs.initiate_key_update())
            items.append(records.write.seal_item(content_type, view[pos:pos + frag]))
        await records.seal(items)

    async def _flush(self) -> None:
        await self._seal_handshake_out()
        if self._records.wire:
            # Hand the buffer itself to the transport (a new one starts): no
            # copy (bytes() of a 256 KiB bytearray, then clear(), measured
            # ~20 us per 16 KiB record here). Nothing else holds the old
            # buffer: writers touch the wire buffer only between awaits.
            if self._send_deadline is None:
                await self.transport_stream.send_all(self._records.take_wire())
            else:
                await self.transport_stream.send_all_within(self._records.take_wire(),
                                                            self._send_deadline - trio.current_time())

    # ---- receiving ----------------------------------------------------------

    async def _read_transport(self) -> bool:
        data = await self.transport_stream.receive_some(RECEIVE_SIZE_BYTES)
        if not data:
            return False
        self._splitter.feed(data)
        return True

    async def _pump_application_records(self) -> None:
        """Process buffered records (reading more if none), batch-opening them."""
        records = []
        while len(records) < self.config.pipeline_depth:
            record = self._splitter.next_record()
            if record is None:
                break
            records.append(record)
        if not records:
            if not await self._read_transport():
                if self._splitter.buffered or self.strict_close_notify:
                    raise trio.BrokenResourceError("transport EOF without close_notify")
                if self._state is _State.OPEN:  # (not over a concurrent aclose)
                    self._state = _State.READ_CLOSED
            return
        if len(records) > 1 and all(r[0] == APPLICATION_DATA for r in records):
            read = self._records.read
            inners = await self._records.open_batch(records)
            if inners is not None:
                for inner in inners:
                    if self._records.read is not read:
                        # A KeyUpdate came mid-batch, yet later records opened
                        # under the old key: the peer did not switch.
                        raise UnexpectedMessage("records under the old key after a KeyUpdate")
                    self._on_plaintext(*read.content(APPLICATION_DATA, inner))
                    if self._hs_messages:
                        await self._post_handshake()
                return
        for record in records:  # one by one: key changes, CCS, exact errors
            await self._process_record(*record)
            if self._hs_messages:
                await self._post_handshake()

    async def _process_record(self, content_type: int, header: bytes, payload: bytes) -> None:
        if self._state is _State.READ_CLOSED:
            return  # RFC 8446 §6.1: data after close_notify is ignored
        if content_type == CHANGE_CIPHER_SPEC:
            if self._hs.version == "1.2":
                # RFC 5246 §7.1: the CCS switches the read keys; it is one 0x01
                # byte and may not split a handshake message.
                if payload != b"\x01":
                    raise DecodeError("change_cipher_spec is not the single byte 0x01")
                if self._reassembler.pending or self._hs_messages:
                    raise UnexpectedMessage("change_cipher_spec inside a handshake flight")
                await self._execute(self._hs.receive_change_cipher_spec())
                return
            # RFC 8446 §5: a plaintext 0x01 CCS between the first ClientHello
            # and the client Finished is dropped; anything else is fatal.
            if self._state is _State.HANDSHAKING and self._hs.version is not None \
                    and payload == b"\x01":
                return
            raise UnexpectedMessage("change_cipher_spec outside the handshake or not 0x01")
        read = self._records.read
        if read is None or (content_type != APPLICATION_DATA and not read.tls12):
            if read is None and content_type == APPLICATION_DATA:
                if self._skip_early_bytes and not self._skip_early_encrypted:
                    self._skip_refused_early_data(len(payload))
                    return
                raise UnexpectedMessage("application data before the handshake keys")
            if read is not None and not (content_type == ALERT and self._state is _State.HANDSHAKING):
                raise UnexpectedMessage(f"unprotected record of type {content_type} after keys")
            if len(payload) > MAX_PLAINTEXT:
                raise RecordOverflow(f"plaintext record of {len(payload)} bytes")
            self._on_plaintext(content_type, payload)
            return
        try:
            plaintext = await self._records.open_one(content_type, header, payload)
        except BadRecordMac:
            if self._skip_early_bytes and self._skip_early_encrypted:
                self._skip_refused_early_data(len(payload))
                return
            raise
        self._skip_early_bytes = 0
        self._on_plaintext(*plaintext)

    def _skip_refused_early_data(self, size: int) -> None:
        self._skip_early_bytes -= size
        if self._skip_early_bytes < 0:
            raise BadRecordMac("more refused early data than max_early_data allows")

    def _on_plaintext(self, content_type: int, content: bytes) -> None:
        if content_type != HANDSHAKE and self._reassembler.pending:
            # RFC 8446 §5.1: handshake messages must not be interleaved with other types.
            raise UnexpectedMessage("record of another type inside a fragmented handshake message")
        if content_type == APPLICATION_DATA:
            if self._state is not _State.OPEN:
                raise UnexpectedMessage("application data before the client Finished")
            self._app_in += content
        elif content_type == HANDSHAKE:
            if not content:
                raise UnexpectedMessage("zero-length handshake fragment")
            epoch = self._read_epoch
            for message in self._reassembler.feed(content):
                self._hs_messages.append((epoch, message))
        elif content_type == ALERT:
            if len(content) != 2:
                raise DecodeError(f"alert of {len(content)} bytes, expected 2")
            description = content[1]
            if description == AlertDescription.close_notify:
                if self._state is _State.HANDSHAKING:
                    raise TLSAlertReceived(AlertDescription.close_notify)
                if self._state is _State.OPEN:  # (not over a concurrent aclose)
                    self._state = _State.READ_CLOSED
            elif content[0] == 1 and self._hs.version == "1.2":
                pass  # RFC 5246 §7.2: a warning does not end a TLS 1.2 connection
            elif description != AlertDescription.user_canceled:
                # RFC 8446 §6: every alert but close_notify/user_canceled is fatal.
                raise TLSAlertReceived(description)
        else:
            raise UnexpectedMessage(f"protected record of content type {content_type}")

    async def _post_handshake(self) -> None:
        # Only read keys change here (a KeyUpdate we owe is sent by the next
        # send_all), so receiving never waits for a blocked sender.
        while self._hs_messages:
            epoch, message = self._hs_messages.popleft()
            await self._execute(self._hs.receive_message(epoch, message))

    # ---- failure ------------------------------------------------------------

    def _check_usable(self) -> None:
        if self._state is _State.CLOSED:
            raise trio.ClosedResourceError("TLSStream was closed")
        if self._state is _State.BROKEN:
            raise trio.BrokenResourceError("TLSStream failed earlier")

    async def _fail(self, exc: TLSError, *, send_alert: bool = True, force: bool = False) -> None:
        """Send our alert for ``exc`` (if any), then close lingeringly."""
        if self._state is _State.CLOSED or (self._state is _State.BROKEN and not force):
            return
        self._state = _State.BROKEN
        try:
            with trio.move_on_after(LINGER_S):
                # (no alert while another task is mid-send: records would interleave)
                if send_alert and not isinstance(exc, TLSAlertReceived) and not self._sending:
                    alert = bytes((2, exc.alert))
                    self._hs_out.clear()
                    if self._records.write is None:
                        self._records.wire += record_header(ALERT, 2) + alert
                    else:
                        self._records.seal_now(ALERT, alert)
                    await self.transport_stream.send_all(self._records.take_wire())
                await self._linger()
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError,
                TLSError):
            pass  # the transport is gone or busy: nothing more to say
        finally:
            try:
                await self._records.release()
            finally:
                await trio.aclose_forcefully(self.transport_stream)

    async def _linger(self) -> None:
        # Half-close, then read what the peer still sends so our close does not
        # turn into a TCP RST that would destroy the alert in flight.
        if not isinstance(self.transport_stream, trio.abc.HalfCloseableStream):
            return
        await self.transport_stream.send_eof()
        drained = 0
        while drained < LINGER_DRAIN_BYTES:
            data = await self.transport_stream.receive_some(RECEIVE_SIZE_BYTES)
            if not data:
                return
            drained += len(data)


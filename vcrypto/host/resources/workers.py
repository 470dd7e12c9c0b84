"""``workers``: a pool of worker processes doing crypto on other cores.

Theory of operation
-------------------
The host's trio thread must stay free to poll queues; `cryptography` holds
the GIL for everything except RSA. So this resource runs jobs in ``processes``
child processes (``vcrypto.host.resources._worker.main``), each talking
to the host over its own stdin/stdout pipes with length-prefixed frames (the
protocol is documented in ``_worker.py``).

Why plain subprocesses and not ``multiprocessing``: trio can await a pipe
directly (``trio.lowlevel.open_process``), a child's death is an EOF on its
stdout that the waiting task sees at once, and there is no fork of a
running trio process (the pool starts after the host's event loop, so
``fork`` is unsafe; ``spawn`` is what we do here, with less machinery).

Jobs are pipelined: a job goes to the worker with the fewest outstanding
jobs, and ``max_inflight`` (default ``2 * processes``) lets the next job
wait in a worker's pipe while it computes the current one, so a worker never
idles for a round trip. A worker answers every request it has read in one
write, so under load the host wakes once per several replies.

Faults: a worker that dies (SIGKILL, OOM) makes every job it holds raise
``ResourceFault`` (the scheduler retries them elsewhere) and is replaced by
a fresh process at once. A worker that sends garbage is killed and
replaced the same way. A worker found dead while idle is replaced before it
is given a job. A job cut off by its timeout does not disturb its worker:
unwritten bytes stay queued, an unclaimed reply is dropped.

Parsed private keys are cached inside each worker by ``key_id`` (the LRU in
``vcrypto.crypto``), so a certificate key is parsed once per worker, not per
signature.

What it costs (2 shared vCPUs, load ~3 from other work, so ±40%; 2
processes, 8 jobs in flight, host CPU per job including ~40 µs of the
benchmark's own task spawning): ping ~85-110 µs; ECDSA P-256 ~100-110 µs
(in-process: 38 µs of CPU); AES-GCM 16 KiB ~115-160 µs (in-process 8-12
µs); RSA-2048-PSS ~130-140 µs (in-process: 900-1700 µs). So a worker hop
pays only for RSA (and any op costing more than ~100 µs): give ``workers``
the RSA capabilities and keep cheap ops on ``openssl`` (``capabilities:
["sign:rsa_pss_rsae_sha256", ...]``).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import trio

import vcrypto
from vcrypto.host.resources._base import CryptoJob, CryptoOpError, Resource, ResourceFault
from vcrypto.host.resources._worker import _READ_BYTES, encode_frame, split_frames
from vcrypto.ops import ALL_CAPABILITIES, Capability

__all__ = ["WorkersResource"]

# ``-c`` rather than ``-m``: the package __init__ imports ``_worker`` (for the
# framing), which ``-m`` would then execute a second time as ``__main__``.
_WORKER_ARGS = ["-c", "import sys; from vcrypto.host.resources._worker import main; "
                      "sys.exit(main())"]


class _WorkerGone(Exception):
    pass


class _Waiter:
    """One request awaiting its reply from a worker."""

    __slots__ = ("event", "reply")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.reply: tuple | None = None

    def wake(self) -> None:
        self.event.set()
        self.event = trio.Event()


class _Worker:
    """One child process, its framed pipe pair, and the requests it holds.

    Requests are pipelined: any number may be outstanding. There is no
    reader task (``Resource.start`` has no nursery to put one in): the first
    waiter that finds nobody reading becomes the reader, delivers every
    reply it reads to its waiter, and when its own reply has arrived hands
    the reading over to another waiter. ``receive_some`` is cancel-safe and
    the partial frame stays in ``_buf``, so a reader that times out loses
    nothing; likewise unwritten bytes stay queued in ``_out`` (see
    ``_flush``). A caller that leaves (timeout) leaves its reply unclaimed:
    it is dropped when it arrives, and the worker stays in step.
    """

    def __init__(self, proc: trio.Process, slot: int):
        self.proc = proc
        self.slot = slot
        self._buf = bytearray()
        self._next_id = 0
        self._pending: dict[int, _Waiter] = {}
        self._out: list[bytes] = []      # frames queued for the next write
        self._flushing = False
        self._reading = False
        self.dead: str | None = None     # why this worker can take no more work

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def load(self) -> int:
        return len(self._pending)

    def usable(self) -> bool:
        return self.dead is None and self.proc.poll() is None

    async def call(self, kind: str, *args: object) -> tuple:
        if self.dead is not None:
            raise _WorkerGone(self.dead)
        msg_id = self._next_id
        self._next_id += 1
        waiter = _Waiter()
        self._pending[msg_id] = waiter
        try:
            await self._send(encode_frame((kind, msg_id, *args)))
            while waiter.reply is None:
                if self.dead is not None:
                    raise _WorkerGone(self.dead)
                if self._out and not self._flushing:
                    await self._flush()     # a flusher was cancelled: finish its work
                elif self._reading:
                    await waiter.event.wait()
                else:
                    await self._read_until(waiter)
            return waiter.reply
        finally:
            del self._pending[msg_id]

    async def _send(self, frame: bytes) -> None:
        """Queue ``frame`` and make sure a flush is under way."""
        self._out.append(frame)
        if not self._flushing:
            await self._flush()

    async def _flush(self) -> None:
        """Write every queued frame, coalesced: the first sender of a
        scheduler tick writes what every task of that tick queued with one
        ``write`` (a write that wakes the worker costs far more than its
        bytes, notes/ipc-costs.md).

        Written straight to the non-blocking fd, not with ``send_all``, so a
        cancellation (a job's timeout) while the pipe is full loses nothing:
        what was not written stays queued, in order, for the next flush.
        """
        self._flushing = True
        try:
            # Let the other tasks woken in this tick queue their frames.
            await trio.lowlevel.cancel_shielded_checkpoint()
            fd = self.proc.stdin.fileno()
            while self._out:
                data = self._out[0] if len(self._out) == 1 else b"".join(self._out)
                try:
                    n = os.write(fd, data)
                except BlockingIOError:
                    self._out[:] = [data]
                    await trio.lowlevel.wait_writable(fd)
                    continue
                except OSError as exc:          # EPIPE: the worker is gone
                    self._die(f"pipe to worker pid {self.pid} broke: {exc!r}")
                    raise _WorkerGone(self.dead) from exc
                self._out[:] = [data[n:]] if n < len(data) else []
        finally:
            self._flushing = False

    async def _read_until(self, mine: _Waiter) -> None:
        self._reading = True
        try:
            while mine.reply is None and self.dead is None:
                try:
                    data = await self.proc.stdout.receive_some(_READ_BYTES)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                    data = b""
                    self._die(f"pipe from worker pid {self.pid} broke: {exc!r}")
                if not data:
                    # EOF: the worker died. Reap it to say how (SIGKILL, crash).
                    with trio.CancelScope(shield=True), trio.move_on_after(1.0):
                        await self.proc.wait()
                    self._die(f"worker pid {self.pid} exited{_describe_exit(self.proc)}")
                    break
                self._buf += data
                try:
                    replies = split_frames(self._buf)
                except ValueError as exc:
                    self._die(f"worker pid {self.pid} sent garbage: {exc}")
                    break
                for reply in replies:
                    waiter = self._pending.get(reply[0]) if isinstance(reply, tuple) else None
                    if waiter is not None:      # else: its caller timed out and left
                        waiter.reply = reply
                        waiter.wake()
        finally:
            self._reading = False
            # Hand the reading over to someone still waiting.
            for waiter in self._pending.values():
                if waiter.reply is None and waiter is not mine:
                    waiter.wake()
                    break

    def _die(self, why: str) -> None:
        if self.dead is None:
            self.dead = why
            if self.proc.poll() is None:
                self.proc.kill()
        for waiter in self._pending.values():
            waiter.wake()


def _describe_exit(proc: trio.Process) -> str:
    code = proc.poll()
    if code is None:
        return ""
    if code < 0:
        return f" (killed by signal {-code})"
    return f" (exit status {code})"


class WorkersResource(Resource):
    kind = "workers"

    def __init__(self, name: str = "workers",
                 capabilities: frozenset[Capability] = ALL_CAPABILITIES,
                 max_inflight: int | None = None, *,
                 processes: int = 2,
                 start_timeout_s: float = 30.0):
        if processes < 1:
            raise ValueError(f"processes must be >= 1, got {processes}")
        super().__init__(name, capabilities, max_inflight or 2 * processes)
        self.processes = processes
        self.start_timeout_s = start_timeout_s
        self._workers: dict[int, _Worker] = {}
        self._replace_lock = trio.Lock()
        self._started = False
        self._closed = False
        # Counters (the scheduler keeps its own per-resource stats).
        self.executed = 0
        self.replaced = 0

    def worker_pids(self) -> list[int]:
        return [w.pid for w in self._workers.values()]

    def busy_pids(self) -> list[int]:
        """Pids of the workers holding at least one job right now."""
        return [w.pid for w in self._workers.values() if w.load]

    # ------------------------------------------------------------ lifecycle

    async def _spawn(self, slot: int) -> _Worker:
        env = dict(os.environ)
        root = str(Path(vcrypto.__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        proc = await trio.lowlevel.open_process(
            [sys.executable, *_WORKER_ARGS],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        worker = _Worker(proc, slot)
        self._workers[slot] = worker
        return worker

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        fresh = [await self._spawn(slot) for slot in range(self.processes)]
        # Wait until every worker has imported cryptography and answers, so
        # a broken environment fails here, loudly, not on the first request.
        with trio.fail_after(self.start_timeout_s):
            for worker in fresh:
                try:
                    await worker.call("ping")
                except _WorkerGone as exc:
                    await self.aclose()
                    raise ResourceFault(f"{self.name}: worker failed to start: {exc}") from exc

    async def _replace(self, worker: _Worker) -> None:
        """Reap a dead ``worker`` and spawn its successor (once, however many
        tasks saw it die)."""
        with trio.CancelScope(shield=True):
            async with self._replace_lock:
                if self._workers.get(worker.slot) is not worker or self._closed:
                    return
                worker.dead = worker.dead or "replaced"
                if worker.proc.poll() is None:
                    worker.proc.kill()
                await worker.proc.wait()
                for stream in (worker.proc.stdin, worker.proc.stdout):
                    await stream.aclose()
                self.replaced += 1
                await self._spawn(worker.slot)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        with trio.CancelScope(shield=True):
            for worker in list(self._workers.values()):
                await worker.proc.stdin.aclose()   # EOF: the worker exits
            with trio.move_on_after(2.0):
                for worker in self._workers.values():
                    await worker.proc.wait()
            for worker in self._workers.values():
                if worker.proc.poll() is None:
                    worker.proc.kill()
                    await worker.proc.wait()
                await worker.proc.stdout.aclose()

    # ------------------------------------------------------------- execution

    async def _pick(self) -> _Worker:
        if self._closed or not self._started:
            raise ResourceFault(f"{self.name}: not running")
        for worker in list(self._workers.values()):
            if not worker.usable():
                await self._replace(worker)       # found dead while idle
        return min(self._workers.values(), key=lambda w: (w.load, w.slot))

    async def _call(self, kind: str, *args: object) -> tuple:
        worker = await self._pick()
        try:
            return await worker.call(kind, *args)
        except _WorkerGone as exc:
            raise ResourceFault(f"{self.name}: {exc}") from exc
        finally:
            if worker.dead is not None:
                await self._replace(worker)

    async def execute(self, job: CryptoJob) -> bytes:
        reply = await self._call("job", job)
        status = reply[1]
        if status == "ok":
            self.executed += 1
            return reply[2]
        if status == "op_error":
            raise CryptoOpError(CryptoOpError.Kind(reply[2]), reply[3])
        raise ResourceFault(f"{self.name}: {reply[2]}")

    async def probe(self) -> bool:
        try:
            reply = await self._call("ping")
        except ResourceFault:
            return False
        return reply[1:] == ("ok", b"pong")

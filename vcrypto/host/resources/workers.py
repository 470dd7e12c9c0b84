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

Each worker runs one job at a time: an idle worker is taken from a channel,
given a job, and put back when the answer arrives; ``max_inflight`` beyond
``processes`` queues in that channel. Measured on this 2-core machine by
``bench``-style loops in ``tests/vcrypto/test_resources_workers.py``'s
docstring.

Faults: a worker that dies (SIGKILL, OOM) while it holds a job makes that job
raise ``ResourceFault`` (the scheduler retries it elsewhere) and is replaced
by a fresh process before it goes back to the idle channel. A worker whose
exchange was interrupted (a timeout cancelled the await mid-frame) is out of
step with its pipe, so it is killed and replaced too. A worker found dead
while idle is replaced before it is used.

Parsed private keys are cached inside each worker by ``key_id`` (the LRU in
``_crypto``), so a certificate key is parsed once per worker, not per
signature.
"""
from __future__ import annotations

import math
import os
import pickle
import subprocess
import sys
from pathlib import Path

import trio

import vcrypto
from vcrypto.host.resources._base import CryptoJob, CryptoOpError, Resource, ResourceFault
from vcrypto.host.resources._worker import _LEN, MAX_FRAME_BYTES, encode_frame
from vcrypto.ops import ALL_CAPABILITIES, Capability

__all__ = ["WorkersResource"]

# ``-c`` rather than ``-m``: the package __init__ imports ``_worker`` (for the
# framing), which ``-m`` would then execute a second time as ``__main__``.
_WORKER_ARGS = ["-c", "import sys; from vcrypto.host.resources._worker import main; "
                      "sys.exit(main())"]


class _WorkerGone(Exception):
    pass


class _Worker:
    """One child process and its framed pipe pair."""

    def __init__(self, proc: trio.Process, slot: int):
        self.proc = proc
        self.slot = slot
        self._buf = bytearray()
        self._next_id = 0
        self.broken = False   # out of step with its pipe, or dead: replace it

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    async def call(self, kind: str, *args: object) -> tuple:
        msg_id = self._next_id
        self._next_id += 1
        self.broken = True          # until the reply has been read in full
        try:
            await self.proc.stdin.send_all(encode_frame((kind, msg_id, *args)))
            reply = await self._read_frame()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise _WorkerGone(f"pipe to worker pid {self.pid} broke: {exc}") from exc
        if not isinstance(reply, tuple) or not reply or reply[0] != msg_id:
            raise _WorkerGone(f"worker pid {self.pid} answered out of step")
        self.broken = False
        return reply

    async def _fill(self, n: int) -> None:
        while len(self._buf) < n:
            data = await self.proc.stdout.receive_some(65536)
            if not data:
                # EOF: the worker died. Reap it to say how (SIGKILL, crash).
                with trio.move_on_after(1.0):
                    await self.proc.wait()
                raise _WorkerGone(f"worker pid {self.pid} exited"
                                  f"{_describe_exit(self.proc)}")
            self._buf += data

    async def _read_frame(self) -> object:
        await self._fill(_LEN.size)
        (length,) = _LEN.unpack_from(self._buf)
        if length > MAX_FRAME_BYTES:
            raise _WorkerGone(f"worker pid {self.pid} sent a {length}-byte frame")
        await self._fill(_LEN.size + length)
        body = bytes(self._buf[_LEN.size:_LEN.size + length])
        del self._buf[:_LEN.size + length]
        return pickle.loads(body)


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
        super().__init__(name, capabilities, max_inflight or processes)
        self.processes = processes
        self.start_timeout_s = start_timeout_s
        self._workers: dict[int, _Worker] = {}
        self._idle_send, self._idle_recv = trio.open_memory_channel[_Worker](math.inf)
        self._busy: set[_Worker] = set()
        self._started = False
        self._closed = False
        # Counters (the scheduler keeps its own per-resource stats).
        self.executed = 0
        self.replaced = 0

    def worker_pids(self) -> list[int]:
        return [w.pid for w in self._workers.values()]

    def busy_pids(self) -> list[int]:
        """Pids of the workers holding a job right now."""
        return [w.pid for w in self._busy]

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
        for worker in fresh:
            self._idle_send.send_nowait(worker)

    async def _replace(self, worker: _Worker) -> _Worker:
        """Kill ``worker`` (if still alive), reap it, spawn its successor."""
        with trio.CancelScope(shield=True):
            if worker.alive():
                worker.proc.kill()
            await worker.proc.wait()
            for stream in (worker.proc.stdin, worker.proc.stdout):
                await stream.aclose()
            self.replaced += 1
            return await self._spawn(worker.slot)

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
                if worker.alive():
                    worker.proc.kill()
                    await worker.proc.wait()
                await worker.proc.stdout.aclose()

    # ------------------------------------------------------------- execution

    async def _checkout(self) -> _Worker:
        if self._closed or not self._started:
            raise ResourceFault(f"{self.name}: not running")
        worker = await self._idle_recv.receive()
        if not worker.alive():
            worker = await self._replace(worker)
        return worker

    async def _call(self, kind: str, *args: object) -> tuple:
        worker = await self._checkout()
        self._busy.add(worker)
        try:
            return await worker.call(kind, *args)
        except _WorkerGone as exc:
            raise ResourceFault(f"{self.name}: {exc}") from exc
        finally:
            self._busy.discard(worker)
            if worker.broken:
                worker = await self._replace(worker)
            self._idle_send.send_nowait(worker)

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

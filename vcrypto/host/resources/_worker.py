"""Entry point of one ``workers`` child process (``main``), and its framing.

Protocol on the child's stdin/stdout (a private pipe to the host, which
spawned it; nobody else can write to it, so pickle is acceptable here):
every message is a frame ``u32 big-endian length || pickle(payload)``.

host -> worker   ``("job", msg_id, CryptoJob)`` or ``("ping", msg_id)``
worker -> host   ``(msg_id, "ok", result_bytes)``
                 ``(msg_id, "op_error", kind_value, detail)``  CryptoOpError
                 ``(msg_id, "fault", detail)``                 ResourceFault

The host may pipeline several requests; the worker answers in order. It
runs every complete request it has read before writing the answers in one
``write``: requests that queued up while it was busy are answered together,
so the host wakes once for the lot (each wake costs the host ~15-20 µs here,
notes/ipc-costs.md). Parsed private keys stay cached in this process by
``key_id`` (``vcrypto.crypto``'s LRU), so a worker parses a certificate key once,
not per signature. EOF on stdin means the host is gone: exit. SIGINT is
ignored: the host decides when workers stop.
"""
from __future__ import annotations

import os
import pickle
import signal
import struct
import sys

from vcrypto.host.resources._base import CryptoOpError, ResourceFault
from vcrypto.host.resources._crypto import perform

_LEN = struct.Struct(">I")
# Reads below glibc's mmap threshold (128 KiB): a 1 MiB read buffer costs an
# mmap + page faults per read, which doubled the cost of a round trip here.
_READ_BYTES = 64 * 1024
MAX_FRAME_BYTES = 64 * 1024 * 1024


def split_frames(buf: bytearray) -> list[object]:
    """Remove and decode every complete frame at the start of ``buf``."""
    out = []
    while len(buf) >= _LEN.size:
        (length,) = _LEN.unpack_from(buf)
        if length > MAX_FRAME_BYTES:
            raise ValueError(f"frame of {length} bytes exceeds {MAX_FRAME_BYTES}")
        if len(buf) < _LEN.size + length:
            break
        out.append(pickle.loads(bytes(buf[_LEN.size:_LEN.size + length])))
        del buf[:_LEN.size + length]
    return out


def encode_frame(payload: object) -> bytes:
    body = pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
    return _LEN.pack(len(body)) + body


def handle(message: tuple) -> tuple:
    kind, msg_id = message[0], message[1]
    if kind == "ping":
        return (msg_id, "ok", b"pong")
    if kind != "job":
        return (msg_id, "fault", f"unknown message kind {kind!r}")
    try:
        return (msg_id, "ok", perform(message[2]))
    except CryptoOpError as exc:
        return (msg_id, "op_error", exc.kind.value, exc.detail)
    except ResourceFault as exc:
        return (msg_id, "fault", str(exc))


def main() -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stdin, stdout = sys.stdin.fileno(), sys.stdout.fileno()
    buf = bytearray()
    while True:
        data = os.read(stdin, _READ_BYTES)
        if not data:
            return 0
        buf += data
        replies = b"".join(encode_frame(handle(m)) for m in split_frames(buf))
        view = memoryview(replies)
        while view:
            view = view[os.write(stdout, view):]


if __name__ == "__main__":
    sys.exit(main())

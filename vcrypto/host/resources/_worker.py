"""Entry point of one ``workers`` child process (``main``), and its framing.

Protocol on the child's stdin/stdout (a private pipe to the host, which
spawned it; nobody else can write to it, so pickle is acceptable here):
every message is a frame ``u32 big-endian length || pickle(payload)``.

host -> worker   ``("job", msg_id, CryptoJob)`` or ``("ping", msg_id)``
worker -> host   ``(msg_id, "ok", result_bytes)``
                 ``(msg_id, "op_error", kind_value, detail)``  CryptoOpError
                 ``(msg_id, "fault", detail)``                 ResourceFault

One job at a time, in order. Parsed private keys stay cached in this
process by ``key_id`` (``_crypto``'s LRU), so a worker parses a certificate
key once, not per signature. EOF on stdin means the host is gone: exit.
SIGINT is ignored: the host decides when workers stop.
"""
from __future__ import annotations

import pickle
import signal
import struct
import sys

from vcrypto.host.resources._base import CryptoOpError, ResourceFault
from vcrypto.host.resources._crypto import perform

_LEN = struct.Struct(">I")
MAX_FRAME_BYTES = 64 * 1024 * 1024


def read_frame(stream) -> object | None:
    header = stream.read(_LEN.size)
    if len(header) < _LEN.size:
        return None
    (length,) = _LEN.unpack(header)
    if length > MAX_FRAME_BYTES:
        raise ValueError(f"frame of {length} bytes exceeds {MAX_FRAME_BYTES}")
    body = stream.read(length)
    if len(body) < length:
        return None
    return pickle.loads(body)


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
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while True:
        message = read_frame(stdin)
        if message is None:
            return 0
        stdout.write(encode_frame(handle(message)))
        stdout.flush()


if __name__ == "__main__":
    sys.exit(main())

"""The frontend <-> engine-backend control channel (unix stream socket).

Only the control plane crosses it: attach, session open/acquire/release,
stats. The data plane is the shared region. Sans-IO: ``encode`` makes a
frame, ``FrameDecoder`` turns received bytes into messages.

Frame: u32 little-endian length of the body, then the body: one UTF-8 JSON
object with a ``"t"`` (type) key. Binary values are hex strings. Versioned by
the ``"v"`` of the attach message; no pointers ever cross (offsets only).
File descriptors ride on the first byte of a frame with SCM_RIGHTS:

=====================  =======================  ====================================
message                direction                fds / fields
=====================  =======================  ====================================
attach                 frontend -> backend      fds [frontend eventfd]; v, pid
attached               backend -> frontend      fds [region memfd, shared memfd,
                                                doorbell eventfd]; frontend_id
open                   frontend -> backend      id, meta (hex canonical metadata)
acquire                frontend -> backend      id, sid, meta: +1 ref on a cached sid
release                frontend -> backend      id, sid: -1 ref
stats                  frontend -> backend      id
reply                  backend -> frontend      id, ok, sid | error kind + detail | stats
=====================  =======================  ====================================
"""
from __future__ import annotations

import json

PROTOCOL_VERSION = 1
MAX_FRAME_BYTES = 1 << 20


class ControlProtocolError(Exception):
    """The peer sent something that is not a valid control frame."""


def encode(msg: dict) -> bytes:
    body = json.dumps(msg, separators=(",", ":")).encode()
    if len(body) > MAX_FRAME_BYTES:
        raise ControlProtocolError(f"control frame of {len(body)} bytes (max {MAX_FRAME_BYTES})")
    return len(body).to_bytes(4, "little") + body


class FrameDecoder:
    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[dict]:
        self._buf += data
        out = []
        while len(self._buf) >= 4:
            n = int.from_bytes(self._buf[:4], "little")
            if n > MAX_FRAME_BYTES:
                raise ControlProtocolError(f"control frame of {n} bytes (max {MAX_FRAME_BYTES})")
            if len(self._buf) < 4 + n:
                break
            body = bytes(self._buf[4:4 + n])
            del self._buf[:4 + n]
            try:
                msg = json.loads(body)
            except ValueError as exc:
                raise ControlProtocolError(f"control frame is not JSON: {exc}") from exc
            if not isinstance(msg, dict) or not isinstance(msg.get("t"), str):
                raise ControlProtocolError("control frame without a type")
            out.append(msg)
        return out

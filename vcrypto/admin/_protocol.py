"""The admin protocol of the vcrypto daemons: sans-IO (no sockets, no clock).

A client connects to a daemon's admin socket (a unix stream socket, e.g.
``host.admin.sock`` next to ``host.sock``), sends ONE request line and reads
ONE reply line; then the daemon closes the connection::

    request:  {"cmd": "status"}\\n          UTF-8 JSON object, at most
                                             MAX_REQUEST_BYTES including "\\n"
    reply:    {"v": 1, "ok": true, "cmd": "status", "status": {...}}\\n
    error:    {"v": 1, "ok": false, "error": {"kind": "...", "detail": "..."}}\\n

Commands: ``status`` (the daemon's status document, ``vcrypto status``
prints it) and ``ping`` (``{"v": 1, "ok": true, "cmd": "ping"}``: the
daemon is up and its loop answers). Unknown keys in the request are an
error, so a typo is not silently ignored.

Error kinds: ``too_large`` (the request line is longer than
MAX_REQUEST_BYTES), ``bad_json`` (not UTF-8 JSON, not an object, trailing
bytes after the line), ``bad_request`` (no/unknown ``cmd``, unknown keys),
``timeout`` (no complete line in time), ``busy`` (too many clients at once),
``unavailable`` (the daemon could not build the reply in time, e.g. its poll
loop is stuck), ``internal`` (a bug building the reply; the daemon logs it
and carries on).

``RequestReader`` takes bytes as they arrive and gives back the parsed
``AdminRequest`` once the line is complete, or raises ``AdminProtocolError``
carrying the kind to reply with: the socket server around it is thin.
"""
from __future__ import annotations

import dataclasses
import json

PROTOCOL_VERSION = 1
#: A request is one short line; anything longer is a hostile or broken client.
MAX_REQUEST_BYTES = 1024
COMMANDS = ("status", "ping")
_REQUEST_KEYS = {"cmd"}


class AdminProtocolError(Exception):
    """A request the daemon refuses; ``kind`` is the reply's error kind."""

    def __init__(self, kind: str, detail: str):
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


@dataclasses.dataclass(frozen=True)
class AdminRequest:
    cmd: str

    def __post_init__(self) -> None:
        if self.cmd not in COMMANDS:
            raise AdminProtocolError("bad_request", f"unknown cmd {self.cmd!r} "
                                                    f"(expected one of {', '.join(COMMANDS)})")


def parse_request(line: bytes) -> AdminRequest:
    """One request line (without its newline) -> ``AdminRequest``."""
    try:
        obj = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise AdminProtocolError("bad_json", f"request is not UTF-8 JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise AdminProtocolError("bad_json", f"request must be a JSON object, got {type(obj).__name__}")
    unknown = set(obj) - _REQUEST_KEYS
    if unknown:
        raise AdminProtocolError("bad_request", f"unknown keys {sorted(unknown)} (expected cmd)")
    cmd = obj.get("cmd")
    if not isinstance(cmd, str):
        raise AdminProtocolError("bad_request", f"cmd: expected a string, got {cmd!r}")
    return AdminRequest(cmd)


class RequestReader:
    """Accumulates a request line; bounded by ``MAX_REQUEST_BYTES``."""

    def __init__(self, max_bytes: int = MAX_REQUEST_BYTES):
        self._buf = bytearray()
        self._max = max_bytes

    def feed(self, data: bytes) -> AdminRequest | None:
        """Bytes received; the request once its line is complete, else None."""
        self._buf += data
        end = self._buf.find(b"\n")
        if end < 0:
            if len(self._buf) >= self._max:
                raise AdminProtocolError("too_large", f"request line longer than {self._max} bytes")
            return None
        if end + 1 > self._max:
            raise AdminProtocolError("too_large", f"request line longer than {self._max} bytes")
        if self._buf[end + 1:].strip():
            # one request per connection: anything after the line is a client bug
            raise AdminProtocolError("bad_json", "bytes after the request line")
        return parse_request(bytes(self._buf[:end]))

    def eof(self) -> AdminRequest:
        """The client shut down its side: a last line without "\\n" is accepted."""
        if not self._buf.strip():
            raise AdminProtocolError("bad_request", "empty request")
        return parse_request(bytes(self._buf))


def encode_request(cmd: str) -> bytes:
    return json.dumps({"cmd": cmd}).encode() + b"\n"


def encode_reply(cmd: str, body: dict | None = None) -> bytes:
    reply: dict = {"v": PROTOCOL_VERSION, "ok": True, "cmd": cmd}
    if body is not None:
        reply[cmd] = body
    return json.dumps(reply, separators=(",", ":"), sort_keys=False).encode() + b"\n"


def encode_error(kind: str, detail: str) -> bytes:
    return json.dumps({"v": PROTOCOL_VERSION, "ok": False,
                       "error": {"kind": kind, "detail": detail}}).encode() + b"\n"


def decode_reply(data: bytes) -> dict:
    """A reply line -> the reply object; ``AdminProtocolError`` for a bad one
    (kind ``bad_reply``) and for an error reply (its own kind)."""
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise AdminProtocolError("bad_reply", f"reply is not UTF-8 JSON: {exc}") from exc
    if not isinstance(obj, dict) or obj.get("v") != PROTOCOL_VERSION:
        raise AdminProtocolError("bad_reply", f"reply is not a v{PROTOCOL_VERSION} admin reply")
    if not obj.get("ok"):
        err = obj.get("error") or {}
        raise AdminProtocolError(str(err.get("kind", "error")), str(err.get("detail", "")))
    return obj

"""What an HTTP/1.x request line may say before it is proxied (pure code, no I/O).

h11 checks the request line's syntax; this module checks its meaning, the
way nginx does at the edge:

- the version: only HTTP/1.0 and HTTP/1.1 (else 505); ``PRI * HTTP/2.0`` is
  the HTTP/2 connection preface sent to an HTTP/1 connection (400, close);
- the method: ``CONNECT`` asks for a tunnel we do not offer (405);
- the target's form (RFC 9112 §3.2): origin-form, absolute-form, or ``*``
  for ``OPTIONS``; an absolute-form target names the host that routes the
  request (its Host header is ignored) and is forwarded in origin-form with
  that authority as Host.

``check_request_line`` returns a ``RequestTarget`` or raises
``RequestLineError`` carrying the status to answer.
"""
from __future__ import annotations

from dataclasses import dataclass

#: What a 405 lists: the methods this proxy forwards (RFC 9110 §15.5.6: "The
#: origin server MUST generate an Allow header field in a 405 response").
ALLOWED_METHODS = b"GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS, TRACE"


class RequestLineError(Exception):
    """The request line cannot be proxied; ``status`` is the answer."""

    def __init__(self, status: int, message: str, headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


@dataclass(frozen=True)
class RequestTarget:
    """Where a checked request goes: ``authority`` and ``path`` route it,
    ``target`` is what the upstream receives; ``absolute`` says the client
    sent absolute-form (so ``authority`` replaces its Host header)."""

    authority: bytes
    path: str
    target: bytes
    absolute: bool = False


def check_request_line(method: bytes, target: bytes, http_version: bytes, host: bytes) -> RequestTarget:
    if method == b"PRI" and target == b"*" and http_version == b"2.0":
        # RFC 9113 §3.4: the preface of a client that assumed HTTP/2; this
        # connection speaks HTTP/1.1 (h2 is offered through ALPN only).
        raise RequestLineError(400, "HTTP/2 connection preface on an HTTP/1.1 connection")
    if http_version not in (b"1.1", b"1.0"):
        # RFC 9110 §15.6.6: 505 "the server does not support, or refuses to
        # support, the major version of HTTP that was used in the request".
        raise RequestLineError(505, f"HTTP/{http_version.decode('ascii', 'replace')} is not served here")
    if method == b"CONNECT":
        raise RequestLineError(405, "CONNECT is not allowed", ((b"allow", ALLOWED_METHODS),))
    if target.startswith(b"/"):
        return RequestTarget(host, _path_of(target), target)
    if target == b"*":
        # RFC 9112 §3.2.4: "The asterisk-form of request-target is only used
        # for a server-wide OPTIONS request".
        if method != b"OPTIONS":
            raise RequestLineError(400, "the '*' target is only valid for OPTIONS")
        return RequestTarget(host, "*", target)
    scheme, sep, rest = target.partition(b"://")
    if not sep:
        raise RequestLineError(400, "request target must be origin-form ('/path') or absolute-form")
    if scheme.lower() not in (b"http", b"https"):
        raise RequestLineError(400, f"absolute-form target with scheme {scheme.decode('ascii', 'replace')!r}")
    cut = min((i for i in (rest.find(b"/"), rest.find(b"?"), rest.find(b"#")) if i >= 0), default=len(rest))
    authority, tail = rest[:cut], rest[cut:]
    if not authority:
        # RFC 9110 §4.2.1: "A sender MUST NOT generate an "http" URI with an empty host identifier."
        raise RequestLineError(400, "absolute-form target without a host")
    if b"@" in authority:
        # RFC 9110 §4.2.4: userinfo is deprecated; "a recipient SHOULD parse for
        # userinfo and treat its presence as an error".
        raise RequestLineError(400, "absolute-form target with userinfo")
    tail = tail.split(b"#", 1)[0]
    if not tail.startswith(b"/"):
        tail = b"/" + tail  # RFC 9112 §3.2.1: an empty path is sent as "/"
    # RFC 9112 §3.2.2: "When an origin server receives a request with an
    # absolute-form of request-target, the origin server MUST ignore the
    # received Host header field (if any) and instead use the host
    # information of the request-target."
    return RequestTarget(authority, _path_of(tail), tail, absolute=True)


def _path_of(target: bytes) -> str:
    return target.decode("latin-1").split("?", 1)[0]

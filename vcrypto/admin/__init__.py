"""The vcrypto daemons' admin endpoint and the ``vcrypto`` command.

- ``_protocol``: the request/reply lines (sans-IO; its docstring is the
  protocol reference);
- ``_server``: ``serve_admin``, the trio task a daemon runs on its admin
  unix socket (bounded, timed, never in the way of the data path);
- ``_client``: ``query`` (blocking), the runtime file a supervisor writes
  (``vcrypto.json``: where the admin sockets are) and socket discovery;
- ``_render``: status documents -> the tables ``vcrypto status`` prints;
- ``_cli``: ``vcrypto status [--json]``.

The daemons build their documents themselves (``vcrypto.host.status``,
``vcrypto.engine.backend._status``); this package never imports them.
"""
from ._client import (DAEMONS, RUNTIME_FILE, SYSTEM_RUNTIME_DIR, AdminUnreachable,
                      admin_socket_path, default_admin_paths, find_runtime_dirs, query,
                      read_runtime_file, resolve_admin_socket, write_runtime_file)
from ._cli import main
from ._protocol import (COMMANDS, MAX_REQUEST_BYTES, PROTOCOL_VERSION, AdminProtocolError,
                        AdminRequest, RequestReader, decode_reply, encode_error, encode_reply,
                        encode_request, parse_request)
from ._server import MAX_CLIENTS, REQUEST_TIMEOUT_S, SOCKET_MODE, serve_admin

__all__ = [
    "COMMANDS", "DAEMONS", "MAX_CLIENTS", "MAX_REQUEST_BYTES", "PROTOCOL_VERSION",
    "REQUEST_TIMEOUT_S", "RUNTIME_FILE", "SOCKET_MODE", "SYSTEM_RUNTIME_DIR",
    "AdminProtocolError", "AdminRequest", "AdminUnreachable", "RequestReader",
    "admin_socket_path", "decode_reply", "default_admin_paths", "encode_error", "encode_reply",
    "encode_request", "find_runtime_dirs", "main", "parse_request", "query", "read_runtime_file",
    "resolve_admin_socket", "serve_admin", "write_runtime_file",
]

"""vcrypto: a paravirtualised crypto framework.

Applications reach a virtual crypto device through the engine (frontend
library + engine-backend daemon); the device is served by ``vcrypto-host``,
which schedules requests across a pool of heterogeneous crypto resources.
See DESIGN.md (shared) for the architecture; ``vcrypto.ops`` for the
vocabulary every layer shares.
"""

# What an application's config needs to validate the daemons' socket access
# the way the daemons will (vcproxy's ``vcrypto.socket_mode``/``socket_group``).
from vcrypto._unixsock import (DEFAULT_SOCKET_MODE, SocketAccess, SocketAccessError,  # noqa: E402
                               parse_socket_mode, resolve_socket_group)

__all__ = ["DEFAULT_SOCKET_MODE", "SocketAccess", "SocketAccessError", "parse_socket_mode",
           "resolve_socket_group"]

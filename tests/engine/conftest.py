import pytest

import engine_daemons


@pytest.fixture
def local_backend(tmp_path):
    """An engine-backend with no host behind it (--no-host)."""
    d = engine_daemons.backend(tmp_path).start()
    try:
        yield d
    finally:
        d.stop()


@pytest.fixture
def host_and_backend(tmp_path):
    """A real vcrypto-host and an engine-backend attached to it."""
    h = engine_daemons.host(tmp_path).start()
    b = engine_daemons.backend(tmp_path, host_socket=h.socket_path)
    try:
        b.start()
        yield h, b
    finally:
        b.stop()
        h.stop()

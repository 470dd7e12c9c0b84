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

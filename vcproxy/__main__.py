"""``python -m vcproxy`` is the ``vcproxy`` command (the supervisor starts workers this way)."""
import sys

from vcproxy.cli import main

sys.exit(main())

"""vcrypto: a paravirtualised crypto framework.

Applications reach a virtual crypto device through the engine (frontend
library + engine-backend daemon); the device is served by ``vcrypto-host``,
which schedules requests across a pool of heterogeneous crypto resources.
See DESIGN.md (shared) for the architecture; ``vcrypto.ops`` for the
vocabulary every layer shares.
"""

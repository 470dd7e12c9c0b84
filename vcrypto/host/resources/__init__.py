"""Crypto resources of the host's pool (DESIGN.md §7).

- ``openssl``: in-process `cryptography` (``OpensslResource``);
- ``workers``: a pool of worker processes on other cores (``WorkersResource``);
- ``simulated``: an accelerator model with latency, parallelism, capability
  subset and fault injection (``SimulatedResource``, ``FaultModel``).

All implement the ``Resource`` seam of ``_base``; ``RESOURCE_KINDS`` maps the
config's ``kind`` to the class (``vcrypto.host.pool`` builds them).
"""
from vcrypto.host.resources._base import CryptoJob, CryptoOpError, Resource, ResourceFault
from vcrypto.host.resources.openssl import OpensslResource
from vcrypto.host.resources.simulated import FaultModel, SimulatedResource
from vcrypto.host.resources.workers import WorkersResource

RESOURCE_KINDS: dict[str, type[Resource]] = {
    cls.kind: cls for cls in (OpensslResource, WorkersResource, SimulatedResource)
}

__all__ = [
    "CryptoJob", "CryptoOpError", "Resource", "ResourceFault",
    "OpensslResource", "WorkersResource", "SimulatedResource", "FaultModel",
    "RESOURCE_KINDS",
]

"""Crypto resources of the host's pool (DESIGN.md §7).

- ``openssl``: in-process `cryptography` (``OpensslResource``);
- ``sodium``: in-process libsodium through PyNaCl, a second implementation
  with its real, narrower capabilities (``SodiumResource``);
- ``workers``: a pool of worker processes on other cores (``WorkersResource``);
- ``simulated``: a *model* of an accelerator (latency, parallelism,
  capability subset, fault injection) for fault and latency tests; it
  computes with ``openssl``'s code after a modelled delay, so it is not a
  second implementation (``SimulatedResource``, ``FaultModel``).

All implement the ``Resource`` seam of ``_base``; ``RESOURCE_KINDS`` maps the
config's ``kind`` to the class (``vcrypto.host.scheduling._pool`` builds them).
"""
from vcrypto.host.resources._base import CryptoJob, CryptoOpError, Resource, ResourceFault
from vcrypto.host.resources.openssl import OpensslResource
from vcrypto.host.resources.simulated import FaultModel, SimulatedResource
from vcrypto.host.resources.sodium import SodiumResource
from vcrypto.host.resources.workers import WorkersResource

RESOURCE_KINDS: dict[str, type[Resource]] = {
    cls.kind: cls for cls in (OpensslResource, SodiumResource, WorkersResource, SimulatedResource)
}

__all__ = [
    "CryptoJob", "CryptoOpError", "Resource", "ResourceFault",
    "OpensslResource", "SodiumResource", "WorkersResource", "SimulatedResource", "FaultModel",
    "RESOURCE_KINDS",
]

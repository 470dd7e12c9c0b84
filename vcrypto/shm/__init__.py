"""Shared memory: what crosses process boundaries without being copied.

- ``vcrypto.shm.region``: ``Region``, a memfd + shared mmap; its fd crosses
  unix sockets (SCM_RIGHTS) and the peer maps the same pages.
- ``vcrypto.shm.virtqueue``: the split virtqueue layout (virtio 1.2 §2.7):
  descriptor table, avail ring, used ring, notification suppression
  (flags, used_event/avail_event); driver and device roles.
- ``vcrypto.shm.ring``: the SPSC trans ring of u32 slot indices used between
  an engine frontend and the engine-backend.

Every layout is documented byte by byte in its module docstring.
"""

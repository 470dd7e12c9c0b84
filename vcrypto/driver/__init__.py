"""vcrypto's user-space poll-mode virtio-crypto driver (the notes' "virtio
cryptodev driver"): attach to a ``vcrypto-host`` device over vhost-user, put
sessions on the control path, requests on split data virtqueues.

The driver never imports the host: they meet only on the wire
(``vcrypto.wire``) and in shared memory (``vcrypto.shm``), which is what lets
a QEMU guest stand where this driver stands (tests/vcrypto/test_qemu_guest.py).

API
---
Control path (async, trio; serialised on the socket)::

    drv = await Driver.attach(socket_path, queues=1, queue_size=256,
                              event_idx=True, indirect=True, stateless=True,
                              control_timeout_s=CONTROL_TIMEOUT_S)   # 10 s
    sid = await drv.create_session(SessionParams(Op.AEAD_SEAL, Alg.AES_128_GCM, key=k))
    sid = await drv.create_session(SessionParams(Op.SIGN, Alg.ED25519, key_ref="site"))
    await drv.close_session(sid)               # DriverError if unknown
    h = await drv.register_region(region)      # ADD_MEM_REG: caller's own Region
    caps = await drv.capabilities(); st = await drv.stats()   # vendor messages
    await drv.aclose()

Every control message (attach's negotiation included) waits at most
``control_timeout_s`` for the device: past it, ``DriverTimeout`` (a
``DriverError``; ``.what`` names the message) and the driver refuses further
control requests (the connection is out of step): close it and re-attach.

``create_session`` raises ``SessionCreateError`` (``.status`` = the
virtio-crypto status: NOTSUPP, NOSPC, KEY_REJECTED, ERR).

Data path (non-blocking, no syscalls except an eventfd write when the device
asked for a kick)::

    n = drv.enqueue_burst(q, [DataOp(sid, Op.AEAD_SEAL, src=h.buf(off, len),
                                     dst=h.buf(off2, len + 16), iv=h.buf(...),
                                     aad=h.buf(...), token=anything), ...])
    for c in drv.dequeue_burst(q):             # Completion(token, status, dst_len)
        ...
    await drv.wait_used(q, poll_s=0.0, deadline=math.inf)
                                               # poll, then arm calls, re-check, sleep on call fd;
                                               # DriverTimeout past deadline (trio clock)
    drv.kick_fd(q), drv.call_fd(q)             # for a caller's own wait loop:
    if drv.queues[q].arm_calls(): <wait for call_fd readable; os.eventfd_read(call_fd)>
    drv.queues[q].disarm_calls()
    drv.control_fileno                         # watch the vhost-user socket for EOF
    drv.queues[q].free_slots / in_flight / kicks / calls

Stateless AEAD (virtio 1.2 VIRTIO_CRYPTO_F_AEAD_STATELESS_MODE, negotiated
when the device offers it and ``stateless``; ``drv.queues[q].stateless_aead``):
a ``DataOp(0, Op.AEAD_SEAL, ..., key=h.buf(koff, 16), alg=Alg.AES_128_GCM)``
carries its key, and needs no session (no control round trip at all).

``enqueue_burst`` accepts as many ops as there are free slots and returns
that count. Buffers are (registered region, offset, length): the host reads
inputs and writes the result in place; ``dst`` must hold
``vcrypto.ops.max_dst_bytes(op, alg, src_len)`` (for MAC and
the CHAIN ops exactly that: the MAC length is read off dst and src).

Convenience for tests and benchmarks (copies bytes through a helper-owned
region)::

    pool = await PayloadPool.create(drv, q)
    results = await pool.run([Item(sid, op, alg, src, iv, aad), ...],   # [Result(status, data)]
                             timeout_s=None)   # DriverTimeout if not all answered in time

Driver region layout (one memfd, registered with SET_MEM_TABLE at
guest-physical address 2^36; userspace address = the same number), per
data queue q at ``q * (vring_total + num * 256)``::

    offset                size         content
    0                     16·num       descriptor table
    16·num                6 + 2·num    avail ring
    next 64-byte line     6 + 8·num    used ring     (vcrypto.shm.virtqueue)
    vring_total           256·num      request slots, one per in-flight request:
      slot + 0            72           virtio_crypto_op_data_req header (device-readable)
      slot + 72           1            virtio_crypto_inhdr status (device-writable;
                                       0xFF until the device writes it)
      slot + 73           55           unused
      slot + 128          96           indirect descriptor table (≤ 6 entries:
                                       header, iv, aad, src, dst, status)
      slot + 224          32           unused

With INDIRECT negotiated, slot k's chain is ring descriptor k (flags
INDIRECT) pointing at its table, so ``num`` requests can be in flight; without
it, slot k uses ring descriptors 6k..6k+5 directly (``num // 6`` in flight).
Each registered region gets its own 2^36-byte window of device addresses.
"""
from vcrypto.driver._driver import (
    CONTROL_TIMEOUT_S, Buf, Completion, DataOp, Driver, DriverError, DriverTimeout, Queue,
    RegionHandle, SessionCreateError, check_queue_size,
)
from vcrypto.driver._payload import Item, PayloadPool, Result
from vcrypto.wire.virtio_crypto import SessionParams

__all__ = [
    "CONTROL_TIMEOUT_S", "Buf", "Completion", "DataOp", "Driver", "DriverError", "DriverTimeout",
    "Item", "PayloadPool", "Queue",
    "RegionHandle", "Result", "SessionCreateError", "SessionParams", "check_queue_size",
]

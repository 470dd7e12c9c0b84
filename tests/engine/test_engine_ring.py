"""The SPSC trans ring: model-checked with hypothesis, then across processes."""
from __future__ import annotations

import collections
import mmap
import os
import subprocess
import sys
import textwrap

import pytest
from hypothesis import given, settings, strategies as st

from vcrypto.shm.ring import ENTRIES_OFFSET, RingError, TransRing, ring_bytes


def test_layout_is_cache_line_separated():
    buf = bytearray(ring_bytes(8) + 64)
    r = TransRing(buf, 64, 8, create=True)
    assert r.push_many([7, 8, 9]) == 3
    # tail (producer counter) at +64 from the ring base, head at +0
    assert int.from_bytes(buf[64 + 64:64 + 72], "little") == 3
    assert int.from_bytes(buf[64:72], "little") == 0
    assert int.from_bytes(buf[64 + ENTRIES_OFFSET:64 + ENTRIES_OFFSET + 4], "little") == 7
    assert r.pop_many(2) == [7, 8]
    assert int.from_bytes(buf[64:72], "little") == 2
    r.release()


def test_full_and_empty():
    buf = bytearray(ring_bytes(4))
    r = TransRing(buf, 0, 4, create=True)
    assert r.pop_many(10) == []
    assert r.push_many([1, 2, 3, 4, 5]) == 4
    assert not r.push(6)
    assert len(r) == 4
    assert r.pop_many(1) == [1]
    assert r.push(6)
    assert r.pop_many(10) == [2, 3, 4, 6]
    assert r.empty()
    r.release()


@pytest.mark.parametrize("cap", [0, 1, 3, 6, 1 << 25])
def test_bad_capacity_is_typed_error(cap):
    with pytest.raises(RingError):
        TransRing(bytearray(1 << 12), 0, cap, create=True)


def test_attach_checks_magic_alignment_and_size():
    with pytest.raises(RingError, match="magic"):
        TransRing(bytearray(4096), 0)
    with pytest.raises(RingError, match="aligned"):
        TransRing(bytearray(4096), 8, 4, create=True)
    with pytest.raises(RingError, match="needs"):
        TransRing(bytearray(200), 0, 64, create=True)
    buf = bytearray(ring_bytes(16))
    TransRing(buf, 0, 16, create=True).release()
    with pytest.raises(RingError, match="capacity 16, expected 8"):
        TransRing(buf, 0, 8)


def test_consumer_detects_corrupt_counters():
    buf = bytearray(ring_bytes(4))
    r = TransRing(buf, 0, 4, create=True)
    buf[64:72] = (100).to_bytes(8, "little")   # a hostile tail far past head
    with pytest.raises(RingError, match="corrupt"):
        r.pop_many(4)
    r.release()


ops = st.lists(st.one_of(
    st.tuples(st.just("push"), st.lists(st.integers(0, 2**32 - 1), max_size=20)),
    st.tuples(st.just("pop"), st.integers(0, 20)),
), max_size=60)


@settings(max_examples=150, deadline=None)
@given(cap_log=st.integers(1, 5), script=ops)
def test_ring_matches_a_bounded_fifo(cap_log, script):
    cap = 1 << cap_log
    buf = bytearray(ring_bytes(cap))
    producer = TransRing(buf, 0, cap, create=True)
    consumer = TransRing(buf, 0)  # a second view, as the other process has
    model: collections.deque[int] = collections.deque()
    for kind, arg in script:
        if kind == "push":
            n = producer.push_many(arg)
            assert n == min(len(arg), cap - len(model))
            model.extend(arg[:n])
        else:
            got = consumer.pop_many(arg)
            want = [model.popleft() for _ in range(min(arg, len(model)))]
            assert got == want
        assert len(producer) == len(consumer) == len(model)
    producer.release()
    consumer.release()


CHILD = textwrap.dedent("""
    import mmap, os, sys
    from vcrypto.shm.ring import TransRing
    fd, total = int(sys.argv[1]), int(sys.argv[2])
    mm = mmap.mmap(fd, 0)
    ring = TransRing(mm, 0)
    n = 0
    while n < total:
        batch = list(range(n, min(total, n + 1 + n % 7)))
        n += ring.push_many(batch)
        if n < total and len(ring) == ring.capacity:
            os.sched_yield()
    ring.release()
""")


def test_cross_process_producer_keeps_order():
    """A real second process produces; this one consumes through the same memfd."""
    total = 20000
    fd = os.memfd_create("ring-test")
    try:
        os.ftruncate(fd, ring_bytes(64))
        mm = mmap.mmap(fd, 0)
        ring = TransRing(mm, 0, 64, create=True)
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(fd), str(total)],
                                 pass_fds=(fd,), cwd=os.getcwd())
        got: list[int] = []
        try:
            import time
            deadline = time.monotonic() + 30
            while len(got) < total and time.monotonic() < deadline:
                batch = ring.pop_many(32)
                if batch:
                    got.extend(batch)
                else:
                    time.sleep(0.0002)
        finally:
            assert child.wait(timeout=30) == 0
        assert got == list(range(total))
        ring.release()
        mm.close()
    finally:
        os.close(fd)

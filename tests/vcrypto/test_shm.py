"""memfd regions and the split virtqueue layout and index arithmetic."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vcrypto.shm.region import Region, RegionError
from vcrypto.shm.virtqueue import (
    VIRTQ_AVAIL_F_NO_INTERRUPT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE, VIRTQ_USED_F_NO_NOTIFY,
    SplitVirtqueue, VirtqueueError, need_event, vring_layout,
)


def test_region_shared_between_processes():
    with Region.create("t", 10000) as region:
        assert region.size == 12288          # rounded to pages
        code = textwrap.dedent(f"""
            import sys; sys.path.insert(0, {os.getcwd()!r})
            from vcrypto.shm.region import Region
            r = Region.from_fd("peer", {region.fd})
            assert r.read(0, 5) == b"hello"
            r.write(100, b"world")
        """)
        region.write(0, b"hello")
        subprocess.run([sys.executable, "-c", code], check=True, pass_fds=[region.fd], timeout=30)
        assert region.read(100, 5) == b"world"
        with pytest.raises(RegionError):
            region.view(12280, 16)
        with pytest.raises(RegionError):
            region.view(-1, 2)


def test_region_close_with_live_view_is_reported():
    region = Region.create("t", 4096)
    v = region.view(0, 10)
    with pytest.raises(RegionError, match="still viewed"):
        region.close()
    v.release()


def test_vring_layout_offsets():
    lay = vring_layout(256)
    assert (lay.desc, lay.avail) == (0, 4096)
    assert lay.used % 64 == 0 and lay.used >= 4096 + 6 + 512
    assert lay.total >= lay.used + 6 + 8 * 256
    with pytest.raises(VirtqueueError):
        vring_layout(100)


def _vq(num=8, event_idx=False):
    lay = vring_layout(num)
    mem = memoryview(bytearray(lay.total))
    driver = SplitVirtqueue(num, mem[lay.desc:lay.avail], mem[lay.avail:lay.used],
                            mem[lay.used:], event_idx=event_idx)
    device = SplitVirtqueue(num, mem[lay.desc:lay.avail], mem[lay.avail:lay.used],
                            mem[lay.used:], event_idx=event_idx)
    return driver, device, mem, lay


def test_descriptor_and_ring_bytes_are_where_the_spec_puts_them():
    driver, device, mem, lay = _vq()
    driver.desc.write(3, 0x1122334455667788, 0x99AABBCC, VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE, 5)
    assert bytes(mem[48:64]) == (0x1122334455667788).to_bytes(8, "little") + \
        (0x99AABBCC).to_bytes(4, "little") + (3).to_bytes(2, "little") + (5).to_bytes(2, "little")
    d = device.desc.read(3)
    assert (d.addr, d.len, d.flags, d.next, d.writable) == (0x1122334455667788, 0x99AABBCC, 3, 5, True)
    driver.driver_add(3)
    assert device.device_pending_avail() == 0       # not published yet
    driver.driver_publish()
    assert bytes(mem[lay.avail + 2:lay.avail + 6]) == b"\x01\x00\x03\x00"   # idx=1, ring[0]=3
    assert device.device_pending_avail() == 1 and device.device_pop_avail() == 3
    device.device_add_used(3, 77)
    device.device_publish_used()
    assert bytes(mem[lay.used + 2:lay.used + 12]) == b"\x01\x00" + (3).to_bytes(4, "little") + \
        (77).to_bytes(4, "little")
    assert driver.driver_pop_used() == (3, 77) and driver.driver_pop_used() is None


def test_need_event_is_the_spec_formula():
    assert need_event(0, 1, 0)                  # crossing the event index
    assert not need_event(5, 3, 0)
    assert need_event(0xFFFF, 2, 0xFFFE)        # across the 16-bit wrap
    assert not need_event(0xFFFE, 2, 0xFFFF)


@given(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), st.integers(1, 300))
def test_need_event_matches_a_window_check(event, old, count):
    new = (old + count) & 0xFFFF
    in_window = any((old + i) & 0xFFFF == event for i in range(count))
    assert need_event(event, new, old) == in_window


def test_notification_suppression_flags_and_event_idx():
    driver, device, _, _ = _vq()
    device.device_disable_kicks()
    assert device.used_flags == VIRTQ_USED_F_NO_NOTIFY
    driver.driver_add(0)
    assert not driver.driver_should_kick(*driver.driver_publish())
    device.device_enable_kicks()
    driver.driver_add(1)
    assert driver.driver_should_kick(*driver.driver_publish())
    driver.driver_disable_calls()
    assert driver.avail_flags == VIRTQ_AVAIL_F_NO_INTERRUPT
    device.device_add_used(0, 1)
    assert not device.device_should_call(*device.device_publish_used())

    driver, device, _, _ = _vq(event_idx=True)
    device.device_disable_kicks()
    for i in range(5):                      # a busy device gets no kicks at all
        driver.driver_add(i)
        assert not driver.driver_should_kick(*driver.driver_publish())
    for _ in range(5):
        device.device_pop_avail()
    device.device_enable_kicks()            # avail_event = 5
    driver.driver_add(5)
    assert driver.driver_should_kick(*driver.driver_publish())
    driver.driver_enable_calls()            # used_event = 0
    device.device_add_used(0, 1)
    assert device.device_should_call(*device.device_publish_used())
    driver.driver_pop_used()
    driver.driver_disable_calls()
    device.device_add_used(1, 1)
    assert not device.device_should_call(*device.device_publish_used())


def test_indices_wrap_at_2_16():
    driver, device, _, _ = _vq(num=4)
    for v in (driver, device):
        v.next_avail = v.last_avail = v.last_used = v.next_used = 0xFFFE
    driver._avail[1] = 0xFFFE
    device._used_h[1] = 0xFFFE
    for round_ in range(3):
        for i in range(3):
            driver.driver_add(i)
        driver.driver_publish()
        assert device.device_pending_avail() == 3
        heads = [device.device_pop_avail() for _ in range(3)]
        assert heads == [0, 1, 2]
        for h in heads:
            device.device_add_used(h, h)
        device.device_publish_used()
        assert [driver.driver_pop_used() for _ in range(3)] == [(0, 0), (1, 1), (2, 2)]

"""``_malloc.tune``: freed bulk-sized buffers are reused from the heap, not
mapped, faulted in and unmapped again on every allocation (what a worker's
256 KiB+ bulk buffers cost before; see ``vcproxy.proxy._malloc``).

Each case runs in a fresh interpreter (the thresholds are process-wide) and
counts the minor page faults of allocating four 1 MiB buffers (four
connections' bulk buffers) and freeing them, 50 times: untuned, glibc's
dynamic thresholds still trim the freed heap top (4 MiB > its 2 MiB trim
threshold) and the pages fault in again each round (~50,000 faults); tuned,
they stay in the heap (a few hundred)."""
from __future__ import annotations

import subprocess
import sys

import pytest

from vcproxy.proxy import _malloc

CHILD = """
import resource, sys
from vcproxy.proxy import _malloc
if sys.argv[1] == "tuned":
    assert _malloc.tune()
bufs = [bytearray(1 << 20) for _ in range(4)]   # warm-up: heap grown once
del bufs
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(50):
    # four connections' bulk buffers alive at once, then all freed
    bufs = [bytearray(1 << 20) for _ in range(4)]
    del bufs
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    return int(out.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc")
def test_tuned_process_reuses_heap_pages_for_bulk_buffers():
    if not _malloc.tune():
        pytest.skip("not glibc: nothing to tune")
    untuned, tuned = _faults("untuned"), _faults("tuned")
    # 50 x 4 x 256 pages of 4 KiB fault in again each round without tuning
    assert untuned > 50 * 4 * 100, untuned
    assert tuned < 2000, tuned

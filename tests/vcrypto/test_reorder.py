"""The reorder layer: FIFO release in submission order, or release at once.

Property tests drive requests over resources with random latencies (and
random fail-over retries that finish a request late, elsewhere); a second
test runs the real scheduler on simulated resources under a MockClock."""
from __future__ import annotations

import heapq

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.vcrypto._pool_fixtures import seal_case
from vcrypto.host.scheduling._core import PolicyKind
from vcrypto.host.reorder import ReorderBuffer, ReorderError
from vcrypto.host.resources import SimulatedResource
from vcrypto.host.resources.simulated import FaultModel
from vcrypto.host.scheduling._scheduler import Scheduler

# A request: which resource runs it, that resource's latency, and whether the
# first attempt fails over (a retry elsewhere adds a second latency).
requests_st = st.lists(
    st.tuples(st.integers(0, 3), st.integers(0, 3), st.booleans()),
    min_size=1, max_size=60)
latencies_st = st.lists(st.integers(1, 1000), min_size=4, max_size=4)


def simulate(requests, latencies, arrival_gap: int):
    """Finish time of each request (sans-IO simulation of resources that
    each run one request at a time, FIFO per resource)."""
    free_at = [0] * 4
    finish = []
    for seq, (res, retry_res, fails_over) in enumerate(requests):
        arrival = seq * arrival_gap
        start = max(arrival, free_at[res])
        done = start + latencies[res]
        free_at[res] = done
        if fails_over:
            start = max(done, free_at[retry_res])
            done = start + latencies[retry_res]
            free_at[retry_res] = done
        finish.append(done)
    return finish


def release_log(fifo: bool, finish: list[int]):
    """Feed completions in finish order; return (time, seq) of each release."""
    buf: ReorderBuffer[int] = ReorderBuffer(fifo)
    seqs = [buf.admit() for _ in finish]
    assert seqs == list(range(len(finish)))
    events = [(t, seq) for seq, t in enumerate(finish)]
    heapq.heapify(events)
    log = []
    while events:
        t, seq = heapq.heappop(events)
        log.extend((t, item) for item in buf.complete(seq, seq))
    assert buf.in_flight == 0 and buf.held == 0
    return log


@settings(max_examples=200, deadline=None)
@given(requests_st, latencies_st, st.integers(0, 50))
def test_fifo_releases_in_submission_order(requests, latencies, gap):
    finish = simulate(requests, latencies, gap)
    log = release_log(True, finish)
    assert [seq for _, seq in log] == list(range(len(requests)))
    # ... and as early as possible: when it and everything before it is done.
    for t, seq in log:
        assert t == max(finish[: seq + 1])


@settings(max_examples=200, deadline=None)
@given(requests_st, latencies_st, st.integers(0, 50))
def test_unordered_nothing_waits_behind_a_slow_request(requests, latencies, gap):
    finish = simulate(requests, latencies, gap)
    log = release_log(False, finish)
    assert sorted(seq for _, seq in log) == list(range(len(requests)))
    for t, seq in log:
        assert t == finish[seq]          # released the moment it finished


@settings(max_examples=15, deadline=None)
@given(st.lists(st.integers(10, 2000), min_size=3, max_size=3), st.integers(0, 2**16),
       st.booleans(), st.integers(5, 30))
def test_scheduler_plus_reorder_on_simulated_resources(latencies_us, seed, fifo, n):
    """Real scheduler, simulated resources with random latencies and a
    fault rate (retries elsewhere finish late): the published order is
    submission order with fifo, finish order without."""

    async def main():
        resources = [SimulatedResource(f"r{i}", max_inflight=4, parallelism=2,
                                       default_latency_us=lat, seed=seed + i)
                     for i, lat in enumerate(latencies_us)]
        resources[0].set_faults(FaultModel(error_rate=0.3))
        buf: ReorderBuffer[int] = ReorderBuffer(fifo)
        published: list[int] = []
        finished: list[int] = []
        async with Scheduler(resources, policy=PolicyKind.ROUND_ROBIN) as scheduler:
            async def one(case, seq):
                case.check(await scheduler.submit(case.job))
                finished.append(seq)
                published.extend(buf.complete(seq, seq))

            async with trio.open_nursery() as nursery:
                for i in range(n):
                    nursery.start_soon(one, seal_case(i), buf.admit())
                    await trio.sleep(0.0001)
        assert sorted(published) == list(range(n))
        if fifo:
            assert published == list(range(n))
        else:
            assert published == finished

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_misuse_is_a_typed_error():
    buf: ReorderBuffer[str] = ReorderBuffer(True)
    a, b = buf.admit(), buf.admit()
    assert buf.complete(b, "b") == []
    assert buf.held == 1 and buf.held_total == 1
    with pytest.raises(ReorderError, match="already completed"):
        buf.complete(b, "again")
    with pytest.raises(ReorderError, match="never admitted"):
        buf.complete(7, "x")
    assert buf.complete(a, "a") == ["a", "b"]


async def test_fifo_holds_back_early_finishers_then_releases_in_order(autojump_clock):
    """Fixed case: a slow resource and a fast one finish out of order; the
    reorder buffer publishes in submission order, the unordered one does not."""
    slow = SimulatedResource("slow", max_inflight=8, parallelism=8, default_latency_us=5000)
    fast = SimulatedResource("fast", max_inflight=8, parallelism=8, default_latency_us=100)
    fifo, unordered = ReorderBuffer(True), ReorderBuffer(False)
    published_fifo, published_unordered, finished = [], [], []
    async with Scheduler([slow, fast], policy=PolicyKind.ROUND_ROBIN) as scheduler:
        async def one(i, seq_f, seq_u):
            case = seal_case(i)
            case.check(await scheduler.submit(case.job))
            finished.append(i)
            published_fifo.extend(fifo.complete(seq_f, i))
            published_unordered.extend(unordered.complete(seq_u, i))

        async with trio.open_nursery() as nursery:
            for i in range(10):
                nursery.start_soon(one, i, fifo.admit(), unordered.admit())
                await trio.sleep(0.00001)
    assert finished != list(range(10))                 # really out of order
    assert published_fifo == list(range(10))
    assert published_unordered == finished
    assert fifo.held_total > 0 and unordered.held_total == 0

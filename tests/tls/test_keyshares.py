"""KeySharePool: background refills in one call, each share handed out once,
expiry without traffic, failures that never cost a handshake, the off switch."""
from __future__ import annotations

import os

import pytest
import trio
from cryptography.hazmat.primitives.asymmetric import x25519

from vcproxy.tls import InlineProvider, KeySharePool
from vcproxy.tls import _keyshares


class Generator:
    """Real key pairs (the inline provider's), counting the calls."""

    def __init__(self):
        self.calls: list[int] = []
        self.fail = False

    async def __call__(self, group: str, n: int):
        self.calls.append(n)
        await trio.sleep(0.001)  # a round trip
        if self.fail:
            raise RuntimeError("engine said no")
        return [InlineProvider().key_share(group) for _ in range(n)]


def pool(gen, **kw):
    kw.setdefault("size", 8)
    return KeySharePool(gen, clock=trio.current_time, **kw)


async def test_a_miss_starts_one_refill_and_each_share_is_handed_out_once(autojump_clock):
    gen = Generator()
    p = pool(gen)
    assert p.take("x25519") is None                # empty: this handshake runs the one-op path
    await trio.sleep(0.01)
    assert gen.calls == [8] and p.stocked("x25519") == 8
    shares = [p.take("x25519") for _ in range(4)]  # down to the low-water mark: no refill yet
    await trio.sleep(0.01)
    assert gen.calls == [8]
    shares.append(p.take("x25519"))                # below it: one refill back to size
    await trio.sleep(0.01)
    assert gen.calls == [8, 5] and p.stocked("x25519") == 8
    shares += [p.take("x25519") for _ in range(8)]
    assert all(s is not None for s in shares)
    assert len({s.scalar for s in shares}) == len(shares)   # never the same share twice
    for s in shares[:3]:  # and each is a real key pair: public = X25519(scalar, 9)
        pub = x25519.X25519PrivateKey.from_private_bytes(s.scalar).public_key().public_bytes_raw()
        assert pub == s.public
    assert p.stats.used == 13 and p.stats.missed == 1 and p.stats.generated == 13


async def test_groups_are_stocked_apart(autojump_clock):
    gen = Generator()
    p = pool(gen)
    p.take("x25519"), p.take("secp256r1")
    await trio.sleep(0.01)
    assert p.take("secp256r1").group == "secp256r1" and p.take("x25519").group == "x25519"


async def test_unused_shares_expire_without_traffic_and_the_idle_pool_stops(autojump_clock):
    gen = Generator()
    p = pool(gen, lifetime_s=30.0)
    p.take("x25519")
    await trio.sleep(1)
    assert p.stocked("x25519") == 8
    await trio.sleep(30)                            # no take meanwhile: the keeper purged them
    assert p._stock["x25519"] == type(p._stock["x25519"])() and p.stats.expired == 8
    assert gen.calls == [8]                         # and generated nothing for an idle group
    assert "x25519" not in p._keepers
    assert p.take("x25519") is None                 # the next handshake misses and restarts it
    await trio.sleep(0.01)
    assert gen.calls == [8, 8]


async def test_a_share_is_never_handed_out_past_its_lifetime(autojump_clock):
    now = [0.0]
    gen = Generator()
    p = KeySharePool(gen, size=4, lifetime_s=30.0, clock=lambda: now[0])
    p.take("x25519")
    await trio.sleep(0.01)
    now[0] = 30.0                                   # (the keeper has not woken yet)
    assert p.take("x25519") is None and p.stats.expired == 4


async def test_failed_refills_miss_and_retry_later(autojump_clock):
    gen = Generator()
    gen.fail = True
    p = pool(gen)
    assert p.take("x25519") is None
    await trio.sleep(0.01)
    assert p.stats.refill_failures == 1
    assert p.take("x25519") is None                 # within RETRY_S: no new attempt
    await trio.sleep(0.01)
    assert gen.calls == [8]
    gen.fail = False
    await trio.sleep(_keyshares.RETRY_S)
    assert p.take("x25519") is None                 # after it: the next miss retries
    await trio.sleep(0.01)
    assert gen.calls == [8, 8] and p.take("x25519") is not None


async def test_size_zero_turns_the_pool_off(autojump_clock):
    gen = Generator()
    p = pool(gen, size=0)
    assert p.take("x25519") is None
    await trio.sleep(1)
    assert gen.calls == [] and p.stats.missed == 0


async def test_a_forked_child_never_uses_its_parents_shares(autojump_clock, monkeypatch):
    gen = Generator()
    p = pool(gen)
    p.take("x25519")
    await trio.sleep(0.01)
    assert p.stocked("x25519") == 8
    monkeypatch.setattr(os, "getpid", lambda: -1)   # as after fork()
    assert p.take("x25519") is None
    assert p.stocked("x25519") == 0                 # the stock was dropped, not handed out


def test_bad_settings_are_refused():
    with pytest.raises(ValueError):
        KeySharePool(Generator(), size=-1)
    with pytest.raises(ValueError):
        KeySharePool(Generator(), lifetime_s=0)


async def test_shares_left_after_a_failed_refill_still_expire_without_traffic(autojump_clock):
    # Forward secrecy holds when the engine goes away too: a refill that fails
    # (engine detached, device down) must not leave the shares still in stock
    # in memory past their lifetime, waiting for a take that may never come.
    gen = Generator()
    p = pool(gen, lifetime_s=30.0)
    p.take("x25519")
    await trio.sleep(0.01)
    gen.fail = True
    for _ in range(5):                              # 3 left, below the low-water mark: a refill, which fails
        assert p.take("x25519") is not None
    await trio.sleep(0.01)
    assert p.stats.refill_failures == 1 and len(p._stock["x25519"]) == 3
    await trio.sleep(31)                            # no take meanwhile
    assert len(p._stock["x25519"]) == 0 and p.stats.expired == 3
    assert gen.calls == [8, 5]                      # (no retry without a take)


async def test_after_a_failed_refill_with_shares_left_a_take_retries_after_retry_s(autojump_clock):
    gen = Generator()
    p = pool(gen)
    p.take("x25519")
    await trio.sleep(0.01)
    gen.fail = True
    for _ in range(5):
        p.take("x25519")
    await trio.sleep(0.01)
    gen.fail = False
    assert p.take("x25519") is not None             # within RETRY_S: no new attempt
    await trio.sleep(0.01)
    assert gen.calls == [8, 5]
    await trio.sleep(_keyshares.RETRY_S)
    assert p.take("x25519") is not None             # after it: this take's wake-up refills
    await trio.sleep(0.01)
    assert gen.calls == [8, 5, 7] and p.stocked("x25519") == 8

"""virtio-rng through the mock driver: random bytes arrive, limits hold, state round-trips."""
from __future__ import annotations

import pytest

from devices.ratelimiter import BucketConfig, RateLimiter
from devices.virtio.mmio import MmioTransport
from devices.virtio.rng import MAX_REQUEST
from devices.virtio.rng.device import RngDevice
from devices.virtio.rng.persist import RngState
from devices.virtio.testing import MockDriver


@pytest.fixture
def rng(memory, interrupt, loop, queue_cls):
    made = []

    def make(**kw):
        t = MmioTransport(RngDevice(**kw), memory, interrupt, loop)
        made.append(t)
        return t.device, MockDriver(t, memory, queue_size=16)
    yield make
    for t in made:
        t.close()


def test_bytes_arrive(rng, loop, interrupt):
    dev, d = rng()
    q = d.queues[0]
    h1 = q.add([], [64])
    h2 = q.add([], [16, 16], indirect=True)
    d.kick(0)
    loop.run_once()
    used = dict(q.get_used())
    assert used == {h1: 64, h2: 32}
    assert q.written(h1) != bytes(64) and q.written(h2) != bytes(32)
    assert interrupt.count == 1 and dev.metrics.bytes == 96


def test_large_request_capped(rng, loop):
    dev, d = rng()
    q = d.queues[0]
    h = q.add([], [MAX_REQUEST + 4096])
    d.kick(0)
    loop.run_once()
    assert q.get_used() == [(h, MAX_REQUEST)]


def test_rate_limited(rng, loop):
    dev, d = rng(rate_limiter=RateLimiter(ops=BucketConfig(1, 60_000)))
    q = d.queues[0]
    q.add([], [8])
    q.add([], [8])
    d.kick(0)
    loop.run_once()
    assert len(q.get_used()) == 1 and dev.metrics.throttled == 1


def test_throttled_request_served_by_timer(rng, loop):
    dev, d = rng(rate_limiter=RateLimiter(ops=BucketConfig(1, 50)))
    q = d.queues[0]
    q.add([], [8])
    q.add([], [8])
    d.kick(0)
    loop.run_once()
    assert len(q.get_used()) == 1
    loop.run_once(timeout=2)  # the timerfd fires once the bucket refilled
    assert len(q.get_used()) == 1


def test_save_restore_compare(rng, loop):
    dev, d = rng(rate_limiter=RateLimiter(bandwidth=BucketConfig(1000, 1000)))
    state = dev.save()
    assert isinstance(state, RngState)
    assert RngDevice.restore(state).save() == state

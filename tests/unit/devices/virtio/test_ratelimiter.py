"""Token buckets with Firecracker's semantics, on a fake clock."""
from __future__ import annotations

import pytest

from devices.ratelimiter import BucketConfig, RateLimiter, TokenBucket


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_bucket_refills_over_refill_time():
    c = Clock()
    b = TokenBucket(BucketConfig(size=1000, refill_time_ms=1000), c)
    assert b.reduce(1000) and not b.reduce(1)
    c.t = 0.5
    assert b.reduce(500) and not b.reduce(1)
    c.t = 10
    assert b.budget <= 1000 and b.reduce(1000)


def test_one_time_burst_spent_first_and_not_refilled():
    c = Clock()
    b = TokenBucket(BucketConfig(size=100, refill_time_ms=1000, one_time_burst=50), c)
    assert b.reduce(150) and not b.reduce(1)
    c.t = 100
    assert b.reduce(100) and not b.reduce(1)


def test_oversize_request_goes_into_debt():
    c = Clock()
    b = TokenBucket(BucketConfig(size=100, refill_time_ms=100), c)
    assert b.reduce(250)
    assert not b.reduce(1)
    assert b.wait_time(1) == pytest.approx(0.151, abs=0.002)


def test_limiter_refunds_ops_when_bandwidth_blocks():
    c = Clock()
    rl = RateLimiter(bandwidth=BucketConfig(1000, 1000), ops=BucketConfig(10, 1000), clock=c)
    assert rl.consume(1000)
    assert not rl.consume(10)
    assert rl.ops.budget == 9 and rl.throttled == 1
    c.t = 1.0
    assert rl.consume(10)


def test_state_roundtrip():
    c = Clock()
    rl = RateLimiter(bandwidth=BucketConfig(1000, 1000, 5), clock=c)
    rl.consume(600)
    rl2 = RateLimiter.from_state(rl.state(), clock=c)
    assert rl2.state() == rl.state()


def test_bad_config():
    with pytest.raises(ValueError):
        BucketConfig(0, 100)


def test_blocked_and_charge():
    c = Clock()
    rl = RateLimiter(bandwidth=BucketConfig(1000, 1000), clock=c)
    assert not rl.blocked()
    rl.charge(1500)  # a frame already received: debt
    assert rl.blocked()
    c.t = 0.6
    assert not rl.blocked()

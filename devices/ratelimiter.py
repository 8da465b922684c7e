"""Token-bucket rate limiting for device I/O, with Firecracker's semantics.

A `TokenBucket(size, one_time_burst, refill_time_ms)` holds up to `size` tokens and
refills completely in `refill_time_ms`; `one_time_burst` is an extra initial allowance
that is spent first and never refilled. A `RateLimiter` pairs a bandwidth bucket
(bytes) with an operations bucket (requests); a request passes only if both have
tokens. A request larger than a whole bucket is let through when the bucket is full and
leaves it in debt, so it is delayed rather than refused forever. State is a frozen
dataclass for snapshots; time comes from a monotonic clock that tests can replace.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Callable


@dataclasses.dataclass(frozen=True)
class BucketConfig:
    size: int
    refill_time_ms: int
    one_time_burst: int = 0

    def __post_init__(self) -> None:
        if self.size <= 0 or self.refill_time_ms <= 0 or self.one_time_burst < 0:
            raise ValueError(f"bad token bucket {self}: size and refill time must be positive")


@dataclasses.dataclass(frozen=True)
class BucketState:
    config: BucketConfig
    budget: float
    one_time_burst: int


@dataclasses.dataclass(frozen=True)
class RateLimiterState:
    bandwidth: BucketState | None
    ops: BucketState | None


class TokenBucket:
    """One bucket; `clock` returns seconds (monotonic)."""

    def __init__(self, config: BucketConfig, clock: Callable[[], float] = time.monotonic,
                 state: BucketState | None = None) -> None:
        self.config = config
        self.clock = clock
        self.budget = float(config.size) if state is None else state.budget
        self.one_time_burst = config.one_time_burst if state is None else state.one_time_burst
        self.last = clock()

    def _refill(self) -> None:
        now = self.clock()
        elapsed, self.last = now - self.last, now
        rate = self.config.size / (self.config.refill_time_ms / 1000.0)
        self.budget = min(float(self.config.size), self.budget + elapsed * rate)

    def reduce(self, tokens: int) -> bool:
        """Take `tokens` if available (burst first); False means throttled, nothing taken."""
        if self.one_time_burst:
            used = min(self.one_time_burst, tokens)
            self.one_time_burst -= used
            tokens -= used
            if not tokens:
                return True
        self._refill()
        if tokens <= self.budget:
            self.budget -= tokens
            return True
        if tokens > self.config.size and self.budget >= self.config.size:
            self.budget -= tokens  # oversize request: pass now, pay with a longer wait
            return True
        return False

    def refund(self, tokens: int) -> None:
        self.budget = min(float(self.config.size), self.budget + tokens)

    def wait_time(self, tokens: int) -> float:
        """Seconds until `tokens` (capped at the bucket size) would be available."""
        self._refill()
        need = min(tokens, self.config.size) - self.budget
        rate = self.config.size / (self.config.refill_time_ms / 1000.0)
        return max(0.0, need / rate)

    def state(self) -> BucketState:
        return BucketState(self.config, self.budget, self.one_time_burst)


class RateLimiter:
    """Bandwidth (bytes) and operations buckets; either may be absent (unlimited)."""

    def __init__(self, bandwidth: BucketConfig | None = None, ops: BucketConfig | None = None,
                 clock: Callable[[], float] = time.monotonic, state: RateLimiterState | None = None) -> None:
        bw_state = state.bandwidth if state else None
        ops_state = state.ops if state else None
        self.bandwidth = TokenBucket(bandwidth, clock, bw_state) if bandwidth else None
        self.ops = TokenBucket(ops, clock, ops_state) if ops else None
        self.throttled = 0

    def consume(self, nbytes: int) -> bool:
        """Account one operation of `nbytes`; False (and nothing taken) if throttled."""
        if self.ops is not None and not self.ops.reduce(1):
            self.throttled += 1
            return False
        if self.bandwidth is not None and nbytes and not self.bandwidth.reduce(nbytes):
            if self.ops is not None:
                self.ops.refund(1)
            self.throttled += 1
            return False
        return True

    def blocked(self) -> bool:
        """True if no operation could pass now (for receive paths that learn the size
        only after taking the data; they then `charge` it)."""
        for b in (self.ops, self.bandwidth):
            if b is not None:
                b._refill()
                if b.budget <= 0 and not b.one_time_burst:
                    self.throttled += 1
                    return True
        return False

    def charge(self, nbytes: int) -> None:
        """Account an operation that already happened, going into debt if needed."""
        for b, n in ((self.ops, 1), (self.bandwidth, nbytes)):
            if b is not None and n and not b.reduce(n):
                b.budget -= n

    def wait_time(self, nbytes: int) -> float:
        """Seconds to wait before a throttled `nbytes` operation could pass."""
        w = 0.0
        if self.ops is not None:
            w = max(w, self.ops.wait_time(1))
        if self.bandwidth is not None:
            w = max(w, self.bandwidth.wait_time(nbytes))
        return max(w, 0.001)

    def state(self) -> RateLimiterState:
        return RateLimiterState(self.bandwidth.state() if self.bandwidth else None,
                                self.ops.state() if self.ops else None)

    @classmethod
    def from_state(cls, state: RateLimiterState, clock: Callable[[], float] = time.monotonic) -> "RateLimiter":
        return cls(state.bandwidth.config if state.bandwidth else None,
                   state.ops.config if state.ops else None, clock, state)

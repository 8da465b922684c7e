"""The virtio-rng device. Requests are served from the VMM's event loop (getrandom is
fast and non-blocking after boot), optionally behind a bytes/ops rate limiter; a
throttled request waits on the avail ring and a timerfd retries it when tokens are back."""
from __future__ import annotations

import os

from ...ratelimiter import RateLimiter
from ..constants import DeviceType
from ..device import VirtioDevice
from ..errors import QueueCorrupt
from ..timerfd import TimerFd
from . import MAX_REQUEST, QUEUE_SIZE
from .metrics import RngMetrics
from .persist import RngState


class RngDevice(VirtioDevice):
    device_type = DeviceType.RNG
    queue_max_sizes = (QUEUE_SIZE,)

    def __init__(self, rate_limiter: RateLimiter | None = None) -> None:
        super().__init__()
        self.rate_limiter = rate_limiter
        self.metrics = RngMetrics()
        self._timer = TimerFd() if rate_limiter is not None else None

    def activated(self) -> None:
        if self._timer is not None:
            self.active.events.add_reader(self._timer.fileno(), self.retry)

    def deactivated(self, act) -> None:
        if self._timer is not None:
            act.events.remove_reader(self._timer.fileno())

    def close(self) -> None:
        super().close()
        if self._timer is not None:
            self._timer.close()

    def process_queue(self, index: int) -> None:
        act = self.active
        if act is None or act.queues[0] is None:
            return
        q = act.queues[0]
        try:
            while True:
                chain = self.pop_valid(q)
                if chain is None:
                    break
                want = min(chain.writable_len, MAX_REQUEST)
                if self.rate_limiter is not None and not self.rate_limiter.consume(want):
                    self.metrics.throttled += 1
                    q.undo_pop()
                    self._timer.arm(self.rate_limiter.wait_time(want))
                    break
                q.add_used(chain.head, self._fill(chain, want))
            if q.needs_notification():
                act.signal_used(0)
        except QueueCorrupt as e:
            act.fail(e)

    def retry(self) -> None:
        """The throttle timer fired: serve the requests left waiting."""
        self._timer.clear()
        self.process_queue(0)

    def _fill(self, chain, want: int) -> int:
        try:
            data = os.getrandom(want)
        except OSError:
            self.metrics.failures += 1
            return 0
        self.metrics.requests += 1
        self.metrics.bytes += len(data)
        return chain.write(0, data)

    def save(self) -> RngState:
        return RngState(self.avail_features, self.acked_features, self.config_generation,
                        self.rate_limiter.state() if self.rate_limiter else None)

    @classmethod
    def restore(cls, state: RngState) -> "RngDevice":
        dev = cls(RateLimiter.from_state(state.rate_limiter) if state.rate_limiter else None)
        dev.avail_features, dev.acked_features = state.avail_features, state.acked_features
        dev.config_generation = state.config_generation
        return dev

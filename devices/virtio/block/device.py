"""The virtio-blk device: one raw image file, read-only or read-write.

Requests are served on a per-disk I/O thread woken by the queue's eventfd (the one KVM
signals through the ioeventfd), so neither the vCPU threads nor the VMM event loop ever
wait on disk I/O. A throttled request is put back on the avail ring and the thread
sleeps until the rate limiter has tokens again.
"""
from __future__ import annotations

import os
import select
import struct
import threading

from ...ratelimiter import RateLimiter
from ..constants import DeviceType, bit
from ..device import Activated, VirtioDevice, drain_eventfd, pop_valid
from ..errors import QueueCorrupt
from . import (
    F_BLK_SIZE, F_DISCARD, F_FLUSH, F_RO, F_SEG_MAX, F_WRITE_ZEROES, QUEUE_SIZE, SECTOR_SIZE, BlockError,
)
from .. import _queue
from . import _fast
from .metrics import BlockMetrics
from .persist import BlockState
from .request import MAX_SEGMENTS, Malformed, Request, execute


class BlockDevice(VirtioDevice):
    """virtio-blk over a raw image; several instances give several disks."""

    device_type = DeviceType.BLOCK
    queue_max_sizes = (QUEUE_SIZE,)

    def __init__(self, path: str, read_only: bool = False, disk_id: str | None = None,
                 rate_limiter: RateLimiter | None = None) -> None:
        features = bit(F_SEG_MAX) | bit(F_BLK_SIZE) | bit(F_FLUSH)
        features |= bit(F_RO) if read_only else bit(F_DISCARD) | bit(F_WRITE_ZEROES)
        super().__init__(features)
        self.path, self.read_only = str(path), read_only
        try:
            self.fd = os.open(self.path, (os.O_RDONLY if read_only else os.O_RDWR) | os.O_CLOEXEC)
        except OSError as e:
            raise BlockError(f"cannot open disk image {self.path}: {e.strerror}") from None
        size = os.fstat(self.fd).st_size
        if size < SECTOR_SIZE:
            os.close(self.fd)
            raise BlockError(f"disk image {self.path} is smaller than one 512-byte sector ({size} bytes)")
        self.capacity = size // SECTOR_SIZE
        self.disk_id = disk_id if disk_id is not None else os.path.basename(self.path)[:20]
        self.rate_limiter = rate_limiter
        self.metrics = BlockMetrics()
        self._thread: threading.Thread | None = None
        self._stop = -1

    def config_space(self) -> bytes:
        # virtio_blk_config: capacity, size_max, seg_max, geometry, blk_size, topology,
        # writeback, unused, num_queues, discard and write-zeroes limits.
        max_sectors = 0xFFFFFFFF
        return struct.pack(
            "<QIIHBBIBBHIBBHIIIIIB3x",
            self.capacity, 0, QUEUE_SIZE - 2, 0, 0, 0, SECTOR_SIZE, 0, 0, 0, 0, 0, 0, 1,
            max_sectors, MAX_SEGMENTS, 1, max_sectors, MAX_SEGMENTS, 1,
        )

    # -- the I/O thread --------------------------------------------------------------
    def activate(self, act: Activated) -> None:
        self.active = act
        self._stop = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._thread = threading.Thread(target=self._run, args=(act, self._stop),
                                        name=f"virtio-blk {self.disk_id}", daemon=True)
        self._thread.start()

    def deactivated(self, act: Activated) -> None:
        thread, stop = self._thread, self._stop
        self._thread, self._stop = None, -1
        os.eventfd_write(stop, 1)
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        os.close(stop)

    def _run(self, act: Activated, stop: int) -> None:
        poller = select.poll()
        kick = act.queue_events[0]
        poller.register(kick, select.POLLIN)
        poller.register(stop, select.POLLIN)
        timeout = None
        while True:
            ready = {fd for fd, _ in poller.poll(timeout)}
            if stop in ready:
                return
            if kick in ready:
                drain_eventfd(kick)
            wait = self.process(act)
            if self.active is not act:  # failed or reset from inside process()
                return
            timeout = None if wait is None else max(1, int(wait * 1000))

    def _count_invalid_request(self) -> None:
        self.metrics.invalid_requests += 1

    def process(self, act: Activated) -> float | None:
        """Serve every available request; return seconds to wait if throttled. Plain
        IN/OUT/FLUSH requests go through the C path (`_fast.serve`, GIL released) unless a
        rate limiter must see each one; the rest one by one through `request.py`."""
        q = act.queues[0]
        if q is None:
            return None
        wait = None
        fast = self.rate_limiter is None and isinstance(q, _queue.SplitQueue)
        try:
            while True:
                if fast and self._serve_fast(q) == _fast.STOP_EMPTY:
                    break
                chain = pop_valid(q, self._count_invalid_request)
                if chain is None:
                    break
                try:
                    req = Request(chain)
                except Malformed:
                    self.metrics.invalid_requests += 1
                    q.add_used(chain.head, 0)
                    continue
                if self.rate_limiter is not None and not self.rate_limiter.consume(req.nbytes):
                    self.metrics.throttled += 1
                    q.undo_pop()
                    wait = self.rate_limiter.wait_time(req.nbytes)
                    break
                q.add_used(chain.head, execute(req, self))
            if q.needs_notification():
                act.signal_used(0)
        except QueueCorrupt as e:
            act.fail(e)
        return wait

    def _serve_fast(self, q) -> int:
        stop, _, reads, writes, rbytes, wbytes, flushes, errors = _fast.serve(q, self.fd, self.capacity,
                                                                            self.read_only)
        m = self.metrics
        m.read_count += reads
        m.write_count += writes
        m.read_bytes += rbytes
        m.write_bytes += wbytes
        m.flush_count += flushes
        m.io_errors += errors
        return stop

    def close(self) -> None:
        self.reset()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    # -- persist ---------------------------------------------------------------------
    def save(self) -> BlockState:
        return BlockState(self.path, self.read_only, self.disk_id, self.capacity, self.avail_features,
                          self.acked_features, self.config_generation,
                          self.rate_limiter.state() if self.rate_limiter else None)

    @classmethod
    def restore(cls, state: BlockState) -> "BlockDevice":
        """A device over the same file with the saved features; the transport re-activates it."""
        limiter = RateLimiter.from_state(state.rate_limiter) if state.rate_limiter else None
        dev = cls(state.path, state.read_only, state.disk_id, limiter)
        if dev.capacity != state.capacity:
            dev.close()
            raise BlockError(f"disk image {state.path} changed size since the snapshot "
                             f"({state.capacity} -> {dev.capacity} sectors)")
        dev.avail_features, dev.acked_features = state.avail_features, state.acked_features
        dev.config_generation = state.config_generation
        return dev

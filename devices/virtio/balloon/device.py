"""The virtio-balloon device: inflate/deflate, statistics and free page reporting.

Queue indices follow the negotiated features as Linux assigns them: inflate, deflate,
then stats (if STATS_VQ), then reporting (if REPORTING). Every PFN is checked against
guest memory through GuestMemory.host_address before any madvise.
"""
from __future__ import annotations

import array
import ctypes
import errno
import struct
import threading

from ..constants import DeviceType, bit
from ..device import VirtioDevice
from ..errors import QueueCorrupt
from . import (
    F_DEFLATE_ON_OOM, F_REPORTING, F_STATS_VQ, PAGE_SHIFT, PAGE_SIZE, QUEUE_SIZE, STAT_NAMES,
)
from .metrics import BalloonMetrics
from .persist import BalloonState

MADV_DONTNEED = 4
MADV_REMOVE = 9
_STAT = struct.Struct("<HQ")
_libc = ctypes.CDLL(None, use_errno=True)
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]


def discard(addr: int, length: int) -> bool:
    """Give [addr, addr+length) of host memory back: punch it out of a memfd, or drop an
    anonymous mapping's pages. The range reads as zeros afterwards."""
    if _libc.madvise(addr, length, MADV_REMOVE) == 0:
        return True
    if ctypes.get_errno() == errno.EINVAL:  # not shared memory: anonymous private mapping
        return _libc.madvise(addr, length, MADV_DONTNEED) == 0
    return False


class BalloonDevice(VirtioDevice):
    device_type = DeviceType.BALLOON
    queue_max_sizes = (QUEUE_SIZE,) * 4

    def __init__(self, target_mib: int = 0, stats: bool = True, deflate_on_oom: bool = True,
                 reporting: bool = True) -> None:
        features = (bit(F_STATS_VQ) if stats else 0) | (bit(F_DEFLATE_ON_OOM) if deflate_on_oom else 0)
        features |= bit(F_REPORTING) if reporting else 0
        super().__init__(features)
        self.stats_enabled, self.deflate_on_oom, self.reporting = stats, deflate_on_oom, reporting
        self.num_pages = target_mib << (20 - PAGE_SHIFT)
        self.actual_pages = 0
        self.stats: dict[str, int] = {}
        self.stats_head: int | None = None
        self.metrics = BalloonMetrics()
        self._lock = threading.Lock()

    # -- config ----------------------------------------------------------------------
    def config_space(self) -> bytes:
        return struct.pack("<IIII", self.num_pages, self.actual_pages, 0, 0)

    def write_config(self, offset: int, data: bytes) -> None:
        if offset == 4 and len(data) == 4:  # only `actual` is driver-writable
            self.actual_pages = int.from_bytes(data, "little")

    def set_target(self, mib: int) -> None:
        """Ask the guest to give back memory until the balloon holds `mib` MiB."""
        self.num_pages = max(0, mib) << (20 - PAGE_SHIFT)
        self.config_changed()

    def roles(self) -> list[str]:
        roles = ["inflate", "deflate"]
        if self.has_feature(F_STATS_VQ):
            roles.append("stats")
        if self.has_feature(F_REPORTING):
            roles.append("reporting")
        return roles

    # -- queues ----------------------------------------------------------------------
    def process_queue(self, index: int) -> None:
        roles = self.roles()
        if index >= len(roles):
            return
        with self._lock:
            role = roles[index]
            if role == "stats":
                self._stats(index)
            else:
                handler = {"inflate": self._inflate, "deflate": self._deflate, "reporting": self._report}[role]
                self.drain(index, handler)

    def _inflate(self, chain) -> int:
        data = chain.read()
        pfns = array.array("I", data[:len(data) - len(data) % 4])
        for start, count in _ranges(sorted(pfns)):
            try:
                self._give_back(start, count)
            except ValueError:  # the run crosses a memory region boundary or leaves RAM
                for pfn in range(start, start + count):
                    try:
                        self._give_back(pfn, 1)
                    except ValueError:
                        self.metrics.invalid_pfns += 1
        return 0

    def _give_back(self, pfn: int, count: int) -> None:
        addr = self.active.memory.host_address(pfn << PAGE_SHIFT, count << PAGE_SHIFT)
        if discard(addr, count << PAGE_SHIFT):
            self.metrics.inflated_pages += count
        else:
            self.metrics.madvise_failures += 1

    def _deflate(self, chain) -> int:
        # Deflated pages fault back in on first touch; nothing to do but count.
        self.metrics.deflated_pages += chain.readable_len // 4
        return 0

    def _report(self, chain) -> int:
        for v in chain.writable + chain.readable:
            addr = ctypes.addressof(ctypes.c_char.from_buffer(v))
            first = (addr + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)
            last = (addr + len(v)) & ~(PAGE_SIZE - 1)
            if last > first and discard(first, last - first):
                self.metrics.reported_bytes += last - first
        return 0

    def _stats(self, index: int) -> None:
        act = self.active
        q = act.queues[index]
        try:
            while True:
                chain = self.pop_valid(q)
                if chain is None:
                    break
                if self.stats_head is not None:  # a driver must keep one buffer: give the old one back
                    q.add_used(self.stats_head, 0)
                data = chain.read()
                for off in range(0, len(data) - len(data) % _STAT.size, _STAT.size):
                    tag, val = _STAT.unpack_from(data, off)
                    if tag < len(STAT_NAMES):
                        self.stats[STAT_NAMES[tag]] = val
                self.metrics.stats_updates += 1
                self.stats_head = chain.head
            if q.needs_notification():
                act.signal_used(index)
        except QueueCorrupt as e:
            act.fail(e)

    def request_stats(self) -> bool:
        """Hand the held statistics buffer back so the guest refills it; False if none."""
        with self._lock:
            act, head = self.active, self.stats_head
            if act is None or head is None or "stats" not in self.roles():
                return False
            self.stats_head = None
            self.complete(self.roles().index("stats"), head, 0)
            return True

    def deactivated(self, act) -> None:
        self.stats_head = None

    # -- persist ---------------------------------------------------------------------
    def save(self) -> BalloonState:
        return BalloonState(self.num_pages, self.actual_pages, self.stats_enabled, self.deflate_on_oom,
                            self.reporting, self.avail_features, self.acked_features, self.config_generation,
                            tuple(sorted(self.stats.items())), self.stats_head)

    @classmethod
    def restore(cls, state: BalloonState) -> "BalloonDevice":
        dev = cls(0, state.stats_enabled, state.deflate_on_oom, state.reporting)
        dev.num_pages, dev.actual_pages = state.num_pages, state.actual_pages
        dev.avail_features, dev.acked_features = state.avail_features, state.acked_features
        dev.config_generation = state.config_generation
        dev.stats = dict(state.stats)
        dev.stats_head = state.stats_head
        return dev


def _ranges(pfns: list) -> list[tuple[int, int]]:
    """Coalesce sorted PFNs into (first, count) runs, dropping duplicates."""
    out: list[list[int]] = []
    for p in pfns:
        if out and p == out[-1][0] + out[-1][1]:
            out[-1][1] += 1
        elif not out or p >= out[-1][0] + out[-1][1]:
            out.append([p, 1])
    return [(a, n) for a, n in out]

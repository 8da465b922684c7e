"""virtio-balloon (device id 5): the host asks for guest pages back.

The host sets a target (`num_pages`, 4 KiB pages); the guest inflates by sending page
frame numbers, which we return to the host with madvise(MADV_REMOVE) on the memfd-backed
guest memory (MADV_DONTNEED for anonymous memory). Optional: a statistics queue and
free page reporting (the guest hands over free page ranges, which we discard the same way).
Constants from linux/virtio_balloon.h.
"""
from __future__ import annotations

from ..errors import BackendError

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
QUEUE_SIZE = 256

F_MUST_TELL_HOST = 0
F_STATS_VQ = 1
F_DEFLATE_ON_OOM = 2
F_FREE_PAGE_HINT = 3
F_PAGE_POISON = 4
F_REPORTING = 5

STAT_NAMES = ("swap_in", "swap_out", "major_faults", "minor_faults", "free_memory", "total_memory",
              "available_memory", "disk_caches", "hugetlb_allocations", "hugetlb_failures")


class BalloonError(BackendError):
    """The balloon could not return memory to the host."""

    hint = "guest memory must be a memfd or anonymous mapping the VMM owns"

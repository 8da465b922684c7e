"""Guest RAM made ahead of time: a memfd whose first pages already exist (allocated and
zeroed), made by the fork server's spare while it waits for a request
(vmm.worker.forkserver, through vmm.worker.main.prepare_while_waiting) and taken by the
VM's GuestMemory (vmm.memory) in place of a new memfd.

    prepare(size, window, hugepages, interrupted)  # the spare: [0, window) in 2 MiB steps
    take(size, hugepages) -> fd | None             # the VMM: the memfd, or None (then a new one)
    discard()                                      # the supervisor, once the VMM is forked
    kept_fds()                                     # for code that closes every other fd

Why: a VM's start writes its kernel (~20 MB at 16 MiB) into fresh guest RAM, and each of
those pages is allocated and zeroed on the way, on the VM's path to its first KVM_RUN.
Under the lab's TCG a page that last held code some guest ran is also ~100x slower to
write the first time (TCG drops its translations of that page): the kernel load took
1.4 s of a 4.2 s warm `mm run` there, and ~50 ms once its pages existed. The spare does
that work while it is idle, at a lower priority, and stops as soon as a request waits.

The memfd holds zeros only: nothing but page faults ever wrote to it. Its pages are
charged to the memory cgroup of the process that faulted them, the spare's (the fork
server's), not the machine's: at most `window` bytes per VM (MM_PREFAULT_MIB, default
64; 0 turns this off). The spare keeps the fd above FD_FLOOR, so that no fd juggling of a
worker's start (stdio, READY_FD) lands on it, and take() moves it back down: the VMM's fd
table is the same, number for number, as when it makes its own memfd.
"""
from __future__ import annotations

import fcntl
import mmap
import os

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing is kept off the worker's start path (tests/unit/worker/test_start_imports.py)
    from typing import Callable

MiB = 1 << 20
STEP = 2 * MiB             # one huge page: the unit of work between two looks at the socket
DEFAULT_WINDOW_MIB = 64    # covers the boot tables, the kernel at 16 MiB and its ~20 MB
FD_FLOOR = 100
MADV_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23)  # <linux/mman.h>, Linux 5.14

_ready: "Prepared | None" = None


class Prepared:
    """A prepared memfd: its size, how many leading bytes exist, and whether it was
    faulted with huge pages (a mapping that asks for them must find them)."""

    __slots__ = ("fd", "size", "populated", "hugepages")

    def __init__(self, fd: int, size: int, populated: int, hugepages: bool) -> None:
        self.fd, self.size, self.populated, self.hugepages = fd, size, populated, hugepages


def window_from_env(environ=os.environ) -> int:
    """MM_PREFAULT_MIB in bytes (a bad value: the default), 0 when off."""
    text = environ.get("MM_PREFAULT_MIB", "")
    try:
        mib = int(text) if text else DEFAULT_WINDOW_MIB
    except ValueError:
        mib = DEFAULT_WINDOW_MIB
    return max(0, mib) * MiB


def prepare(size: int, window: int, hugepages: bool, interrupted: Callable[[], bool] = lambda: False,
            name: str = "mm-guest-ram") -> Prepared | None:
    """Make the memfd for a VM of `size` bytes and fault in [0, window), 2 MiB at a time,
    until done or `interrupted()`; it is kept for take(). None when off or impossible
    (then the VM makes its own memfd, as without a spare)."""
    global _ready
    discard()
    window = min(window, size) // STEP * STEP
    if window <= 0:
        return None
    try:
        first = os.memfd_create(name, os.MFD_CLOEXEC)
    except OSError:
        return None
    fd = fcntl.fcntl(first, fcntl.F_DUPFD_CLOEXEC, FD_FLOOR)
    os.close(first)
    populated = 0
    try:
        os.ftruncate(fd, size)
        with mmap.mmap(fd, window, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE) as m:
            if hugepages:
                m.madvise(mmap.MADV_HUGEPAGE)
            while populated < window and not interrupted():
                m.madvise(MADV_POPULATE_WRITE, populated, STEP)
                populated += STEP
    except OSError:  # no memory now, or a kernel without MADV_POPULATE_WRITE
        if populated == 0:
            os.close(fd)
            return None
    _ready = Prepared(fd, size, populated, hugepages)
    return _ready


def take(size: int, hugepages: bool) -> int | None:
    """The prepared memfd, resized to `size` and moved to the lowest free fd, where a new
    memfd would have been (the caller owns it from now on); None when there is none or it
    was faulted with other pages than `hugepages` asks for."""
    global _ready
    ready, _ready = _ready, None
    if ready is None:
        return None
    if ready.hugepages != hugepages:
        os.close(ready.fd)
        return None
    try:
        if ready.size != size:
            os.ftruncate(ready.fd, size)  # smaller: the pages beyond go back to the host
        return fcntl.fcntl(ready.fd, fcntl.F_DUPFD_CLOEXEC, 0)
    except OSError:
        return None
    finally:
        os.close(ready.fd)


def discard() -> None:
    """Close the prepared memfd, if any (its pages go back unless a child holds it)."""
    global _ready
    ready, _ready = _ready, None
    if ready is not None:
        os.close(ready.fd)


def kept_fds() -> tuple[int, ...]:
    return () if _ready is None else (_ready.fd,)

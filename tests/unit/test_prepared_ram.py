"""vmm.prepared_ram: a spare's memfd with its first pages faulted in, taken by a VM's
GuestMemory in place of a new one."""
from __future__ import annotations

import os

import pytest

from vmm import prepared_ram as pr
from vmm.memory import GuestMemory

MiB = 1 << 20


@pytest.fixture(autouse=True)
def nothing_prepared():
    pr.discard()
    yield
    pr.discard()


def allocated(fd: int) -> int:
    return os.fstat(fd).st_blocks * 512


def test_prepare_faults_in_the_window_and_keeps_the_fd_high():
    ready = pr.prepare(16 * MiB, 6 * MiB, hugepages=False)
    assert ready is not None and pr.kept_fds() == (ready.fd,)
    assert ready.fd >= pr.FD_FLOOR and ready.populated == 6 * MiB
    assert os.fstat(ready.fd).st_size == 16 * MiB
    assert allocated(ready.fd) == 6 * MiB  # the window exists, nothing beyond it


def test_prepare_stops_when_interrupted():
    looks = []

    def interrupted():
        looks.append(1)
        return len(looks) > 2

    ready = pr.prepare(16 * MiB, 16 * MiB, hugepages=False, interrupted=interrupted)
    assert ready.populated == 2 * pr.STEP and allocated(ready.fd) == 2 * pr.STEP


def test_no_window_prepares_nothing():
    assert pr.prepare(16 * MiB, 0, hugepages=False) is None
    assert pr.prepare(16 * MiB, MiB, hugepages=False) is None  # less than one step
    assert pr.kept_fds() == () and pr.take(16 * MiB, False) is None


def test_take_resizes_and_moves_the_fd_down_once():
    ready = pr.prepare(8 * MiB, 8 * MiB, hugepages=False)
    high = ready.fd
    fd = pr.take(32 * MiB, False)
    try:
        assert fd < high and os.fstat(fd).st_size == 32 * MiB and allocated(fd) == 8 * MiB
        assert os.pread(fd, 4096, 0) == bytes(4096)  # zeros: only faults ever wrote to it
        with pytest.raises(OSError):
            os.fstat(high)  # the high copy is closed
        assert pr.take(32 * MiB, False) is None and pr.kept_fds() == ()
    finally:
        os.close(fd)


def test_take_shrinking_gives_the_pages_beyond_back():
    pr.prepare(8 * MiB, 8 * MiB, hugepages=False)
    fd = pr.take(2 * MiB, False)
    try:
        assert os.fstat(fd).st_size == 2 * MiB and allocated(fd) == 2 * MiB
    finally:
        os.close(fd)


def test_take_refuses_memory_faulted_with_other_pages():
    ready = pr.prepare(8 * MiB, 4 * MiB, hugepages=False)
    assert pr.take(8 * MiB, True) is None
    with pytest.raises(OSError):
        os.fstat(ready.fd)  # closed: its small pages would keep KVM from mapping huge ones
    assert pr.kept_fds() == ()


def test_a_new_prepare_replaces_the_old_and_discard_closes():
    old = pr.prepare(8 * MiB, 2 * MiB, hugepages=False)
    new = pr.prepare(8 * MiB, 4 * MiB, hugepages=False)
    assert pr.kept_fds() == (new.fd,)
    if new.fd != old.fd:
        with pytest.raises(OSError):
            os.fstat(old.fd)
    pr.discard()
    assert pr.kept_fds() == ()
    with pytest.raises(OSError):
        os.fstat(new.fd)


def test_guest_memory_takes_the_prepared_memfd():
    pr.prepare(4 * MiB, 4 * MiB, hugepages=False)
    with GuestMemory(4 * MiB) as mem:
        assert allocated(mem.memfd) == 4 * MiB and mem.read(0, 16) == bytes(16)
        mem.write(0x1000, b"kernel")
        assert mem.read(0x1000, 6) == b"kernel"
    with GuestMemory(4 * MiB) as mem:  # the next one makes its own
        assert allocated(mem.memfd) == 0


@pytest.mark.parametrize("text, mib", [("", 64), ("16", 16), ("0", 0), ("-3", 0), ("lots", 64)])
def test_window_from_env(text, mib):
    assert pr.window_from_env({"MM_PREFAULT_MIB": text}) == mib * MiB

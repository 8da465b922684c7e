"""Guest memory without KVM: layout around the MMIO hole, bounds checks, memfd sharing, e820."""
from __future__ import annotations

import mmap
import os

import pytest

from devices.interfaces import GuestMemoryError
from vmm.errors import ConfigError
from vmm.memory import (E820_RAM, E820_RESERVED, GiB, MiB, MMIO_HOLE_END, MMIO_HOLE_START,
                        GuestMemory, layout)


def test_layout_small_is_one_region():
    assert layout(64 * MiB) == [(0, 64 * MiB, 0)]


def test_layout_splits_around_the_mmio_hole():
    assert layout(5 * GiB) == [(0, MMIO_HOLE_START, 0), (MMIO_HOLE_END, 2 * GiB, MMIO_HOLE_START)]


def test_big_memory_regions_and_e820():
    # 20 GiB of address space costs nothing until touched.
    with GuestMemory(20 * GiB) as mem:
        low, high = mem.regions
        assert (low.slot, low.gpa, low.size) == (0, 0, 3 * GiB)
        assert (high.slot, high.gpa, high.size, high.memfd_offset) == (1, 4 * GiB, 17 * GiB, 3 * GiB)
        assert high.host_address == mem.base_address + 3 * GiB
        e820 = mem.e820()
        assert e820[0] == (0, 0x9FC00, E820_RAM)
        assert e820[1] == (0x9FC00, 0x100000 - 0x9FC00, E820_RESERVED)
        assert e820[2] == (0x100000, 3 * GiB - 0x100000, E820_RAM)
        assert e820[3] == (4 * GiB, 17 * GiB, E820_RAM)
        assert sum(s for _, s, t in e820 if t == E820_RAM) == 20 * GiB - (0x100000 - 0x9FC00)
        mem.write(4 * GiB + 123, b"high")
        assert mem.read(4 * GiB + 123, 4) == b"high"
        # Backed by the memfd at the documented offset.
        assert os.pread(mem.memfd, 4, 3 * GiB + 123) == b"high"


@pytest.mark.parametrize("gpa,length", [
    (64 * MiB - 1, 2),          # crosses the end of RAM
    (64 * MiB, 1),              # just past the end
    (-1, 1),                    # negative address
    (0, -1),                    # negative length
    (MMIO_HOLE_START, 1),       # in the hole (RAM is smaller than the hole start here)
    (2**64, 1),
])
def test_out_of_range_raises(gpa, length):
    with GuestMemory(64 * MiB) as mem:
        calls = [lambda: mem.read(gpa, length), lambda: mem.view(gpa, length),
                 lambda: mem.host_address(gpa, length)]
        if length > 0:
            calls.append(lambda: mem.write(gpa, b"x" * length))
        for call in calls:
            with pytest.raises(GuestMemoryError):
                call()


def test_access_across_the_hole_is_refused():
    with GuestMemory(3 * GiB + 64 * MiB) as mem:
        with pytest.raises(GuestMemoryError):
            mem.read(MMIO_HOLE_START - 4, 8)
        with pytest.raises(GuestMemoryError):
            mem.read(MMIO_HOLE_END - 4, 8)
        mem.write(MMIO_HOLE_START - 4, b"abcd")
        mem.write(MMIO_HOLE_END, b"efgh")
        assert mem.read(MMIO_HOLE_START - 4, 4) == b"abcd"
        assert mem.read(MMIO_HOLE_END, 4) == b"efgh"


def test_view_is_zero_copy_and_shared_with_the_memfd():
    with GuestMemory(4 * MiB) as mem:
        v = mem.view(0x2000, 16)
        v[0:4] = b"WXYZ"
        assert mem.read(0x2000, 4) == b"WXYZ"
        # Another mapping of the memfd (what a branch child would do) sees the same bytes.
        other = mmap.mmap(mem.memfd, 4 * MiB, mmap.MAP_SHARED)
        assert other[0x2000:0x2004] == b"WXYZ"
        other[0x3000:0x3002] = b"ok"
        assert mem.read(0x3000, 2) == b"ok"
        other.close()
        v.release()
        mem.write_u64(0x10, 0x1122334455667788)
        assert mem.read_u64(0x10) == 0x1122334455667788


@pytest.mark.parametrize("size", [0, 4095, MiB + 1, 512 * 1024, "1G", None])
def test_bad_sizes_are_config_errors(size):
    with pytest.raises(ConfigError):
        GuestMemory(size)


def test_hugepages_need_2mib_multiple():
    with pytest.raises(ConfigError):
        GuestMemory(MiB, hugepages=True)


def test_hugepages_request(monkeypatch, tmp_path):
    from vmm import memory
    from vmm.errors import HostError

    fake = tmp_path / "shmem_enabled"
    fake.write_text("always within_size advise [never] deny force\n")
    monkeypatch.setattr(memory, "THP_SHMEM", fake)
    with pytest.raises(HostError):
        GuestMemory(64 * MiB, hugepages=True)
    fake.write_text("always within_size [advise] never deny force\n")
    with GuestMemory(64 * MiB, hugepages=True) as mem:
        mem.write(0, b"x")
        assert mem.hugepages


def test_hugepages_auto_follows_the_host(monkeypatch, tmp_path):
    from vmm import memory

    fake = tmp_path / "shmem_enabled"
    monkeypatch.setattr(memory, "THP_SHMEM", str(fake))
    fake.write_text("always within_size advise [never] deny force\n")
    with GuestMemory(64 * MiB, hugepages=None) as mem:
        assert not mem.hugepages        # not allowed here: 4 KiB pages, no error
    fake.write_text("always within_size [advise] never deny force\n")
    with GuestMemory(64 * MiB, hugepages=None) as mem:
        assert mem.hugepages
    with GuestMemory(64 * MiB + 4096, hugepages=None) as mem:
        assert not mem.hugepages        # THP cannot cover a size that is no 2 MiB multiple
    with GuestMemory(64 * MiB, hugepages=False) as mem:
        assert not mem.hugepages

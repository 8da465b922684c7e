"""Kernel loaders: ELF with and without the PVH note, bzImage, and broken files.

The synthetic files are the minimum the loaders parse (headers + a few bytes); real
kernels are booted by the e2e tests. Memory is the real memfd-backed GuestMemory.
"""
import struct

import pytest

from vmm.arch.x86 import loader
from vmm.memory import GuestMemory

MiB = 1 << 20


def make_elf(segments, notes: bytes = b"", entry=0x1000000, machine=62) -> bytes:
    """An ELF64 executable with PT_LOAD `segments` [(paddr, data, memsz)] and a PT_NOTE."""
    phdrs = [(1, paddr, data, memsz) for paddr, data, memsz in segments]
    if notes:
        phdrs.append((4, 0, notes, len(notes)))
    phoff = 64
    data_off = phoff + 56 * len(phdrs)
    out = bytearray(struct.pack("<4sBBBB8xHHIQQQIHHHHHH", b"\x7fELF", 2, 1, 1, 0, 2, machine, 1,
                                entry, phoff, 0, 0, 64, 56, len(phdrs), 64, 0, 0))
    body = bytearray()
    for kind, paddr, blob, memsz in phdrs:
        off = data_off + len(body)
        out += struct.pack("<IIQQQQQQ", kind, 5, off, paddr | 0xFFFFFFFF80000000 if kind == 1 else 0,
                           paddr, len(blob), memsz, 0x1000)
        body += blob
    return bytes(out + body)


def xen_note(ntype: int, desc: bytes) -> bytes:
    return struct.pack("<III", 4, len(desc), ntype) + b"Xen\0" + desc


@pytest.fixture
def mem():
    with GuestMemory(64 * MiB) as m:
        yield m


def test_elf_with_pvh_note_is_loaded_and_entered_there(mem, tmp_path):
    notes = xen_note(6, b"xen-3.0\0") + xen_note(18, struct.pack("<Q", 0x1000123))
    path = tmp_path / "vmlinux"
    path.write_bytes(make_elf([(0x1000000, b"KERNEL", 0x2000)], notes))
    k = loader.load_kernel(mem, path)
    assert (k.kind, k.entry, k.end) == ("pvh", 0x1000123, 0x1002000)
    assert mem.read(0x1000000, 6) == b"KERNEL"
    assert mem.read(0x1000006, 16) == bytes(16)  # bss zeroed


def test_elf_without_note_uses_the_64bit_protocol(mem, tmp_path):
    path = tmp_path / "vmlinux"
    path.write_bytes(make_elf([(0x1000000, b"K" * 64, 64)], entry=0x1000010))
    k = loader.load_kernel(mem, path)
    assert (k.kind, k.entry) == ("elf64", 0x1000010)
    k = loader.load_kernel(mem, path, prefer_pvh=False)
    assert k.kind == "elf64"


def test_pvh_note_with_32bit_descriptor():
    assert loader.find_pvh_entry(xen_note(18, struct.pack("<I", 0x1234))) == 0x1234
    assert loader.find_pvh_entry(xen_note(17, struct.pack("<I", 0x1234))) is None
    assert loader.find_pvh_entry(b"\xff" * 11) is None
    # A note claiming more bytes than there are stops the walk.
    assert loader.find_pvh_entry(struct.pack("<III", 4, 1000, 18) + b"Xen\0") is None


def make_bzimage(setup_sects=4, version=0x020F, xloadflags=1) -> bytes:
    data = bytearray(0x200 * (setup_sects + 1) + 0x1000)
    data[0x1F1] = setup_sects
    data[0x201] = 0x6A
    data[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", data, 0x206, version)
    struct.pack_into("<H", data, 0x236, xloadflags)
    data[0x200 * (setup_sects + 1):0x200 * (setup_sects + 1) + 4] = b"PMOD"
    return bytes(data)


def test_bzimage_loads_protected_mode_part_and_enters_at_64bit_entry(mem, tmp_path):
    path = tmp_path / "bzImage"
    path.write_bytes(make_bzimage())
    k = loader.load_kernel(mem, path)
    assert k.kind == "bzimage"
    assert k.entry == 16 * MiB + 0x200
    assert mem.read(16 * MiB, 4) == b"PMOD"
    assert k.setup_header[0] == 4 and k.setup_header[0x202 - 0x1F1:][:4] == b"HdrS"
    assert len(k.setup_header) == 0x202 + 0x6A - 0x1F1


def test_old_bzimage_without_64bit_entry_is_refused(mem, tmp_path):
    path = tmp_path / "bzImage"
    path.write_bytes(make_bzimage(version=0x020A, xloadflags=0))
    with pytest.raises(loader.KernelError, match="64-bit entry"):
        loader.load_kernel(mem, path)


@pytest.mark.parametrize("content, message", [
    (b"#!/bin/sh\necho hi\n" * 100, "not a Linux kernel"),
    (b"", "not a Linux kernel"),
    (b"\x7fELF\x01\x01" + bytes(80), "64-bit"),
])
def test_non_kernels_are_clear_errors(mem, tmp_path, content, message):
    path = tmp_path / "k"
    path.write_bytes(content)
    with pytest.raises(loader.KernelError, match=message) as info:
        loader.load_kernel(mem, path)
    assert info.value.hint


def test_hostile_elf_segments_are_refused(mem, tmp_path):
    path = tmp_path / "k"
    good = make_elf([(0x1000000, b"x" * 16, 16)])
    # program header claiming file bytes beyond the end
    bad = bytearray(good)
    struct.pack_into("<Q", bad, 64 + 32, 1 << 40)   # p_filesz
    struct.pack_into("<Q", bad, 64 + 40, 1 << 40)   # p_memsz
    path.write_bytes(bytes(bad))
    with pytest.raises(loader.KernelError, match="outside the file"):
        loader.load_kernel(mem, path)
    # segment beyond guest RAM
    path.write_bytes(make_elf([(0x7FF00000, b"x" * 16, 16)]))
    with pytest.raises(loader.KernelError, match="does not fit"):
        loader.load_kernel(mem, path)
    # segment below 1 MiB would overwrite our boot structures
    path.write_bytes(make_elf([(0x7000, b"x" * 16, 16)]))
    with pytest.raises(loader.KernelError, match="below 1 MiB"):
        loader.load_kernel(mem, path)
    path.write_bytes(make_elf([(0x1000000, b"x", 1)], machine=3))
    with pytest.raises(loader.KernelError, match="not x86-64"):
        loader.load_kernel(mem, path)


def test_missing_path_and_directory(mem, tmp_path):
    with pytest.raises(loader.KernelError, match="does not exist"):
        loader.load_kernel(mem, tmp_path / "nope")
    with pytest.raises(loader.KernelError, match="directory"):
        loader.load_kernel(mem, tmp_path)

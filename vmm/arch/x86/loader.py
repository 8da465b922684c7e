"""Kernel loaders: ELF vmlinux (PVH entry note, else the 64-bit boot protocol) and bzImage.

    kernel = load_kernel(mem, path)   # -> LoadedKernel(kind, entry, end, setup_header)

`kind` is "pvh" (enter at the 32-bit XEN_ELFNOTE_PHYS32_ENTRY with hvm_start_info in
ebx), "elf64" (enter at e_entry in long mode with boot_params in rsi) or "bzimage"
(enter at load address + 0x200, the 64-bit entry, with boot_params in rsi). Every
offset and size read from the file is checked against the file and guest RAM: a broken
or hostile file raises KernelError, never writes outside guest memory.
"""
from __future__ import annotations

import os
import stat
import struct
from collections import namedtuple

from devices.errors import GuestMemoryError
from vmm.arch.x86 import layout as L
from vmm.errors import MMError

ELF_MAGIC = b"\x7fELF"
PT_LOAD = 1
PT_NOTE = 4
XEN_ELFNOTE_PHYS32_ENTRY = 18
BZIMAGE_MAGIC = b"HdrS"
SETUP_HEADER_OFFSET = 0x1F1
XLF_KERNEL_64 = 1 << 0
MIN_64BIT_PROTOCOL = 0x020C   # boot protocol 2.12 added xloadflags / the 64-bit entry
MAX_KERNEL_FILE = 1 << 30
MAX_NOTES = 1 << 20           # a PT_NOTE segment is a few hundred bytes; more is not read


class KernelError(MMError):
    """The kernel file is missing, unreadable, or not a kernel we can boot."""

    hint = "pass a Linux vmlinux (ELF, x86-64) or bzImage, e.g. from `mm kernel path`"


# A namedtuple, not a dataclass: dataclasses import `inspect`, a noticeable part of
# `mm boot`'s start-up under emulation.
class LoadedKernel(namedtuple("LoadedKernel", "kind entry end setup_header", defaults=(b"",))):
    """kind: pvh | elf64 | bzimage; entry: guest-physical entry point; end: first byte
    after the loaded image; setup_header: bzImage only, bytes 0x1F1.. for boot_params."""

    __slots__ = ()


class _KernelFile:
    """An open kernel file: bounds-checked reads of its header parts, and segments read
    straight into guest memory (one copy, no file-sized buffer: a vmlinux is ~20 MB and
    only ~15 MB of it is loaded; under emulation every copy shows in boot time)."""

    def __init__(self, fd: int, size: int, name: str) -> None:
        self.fd, self.size, self.name = fd, size, name

    def read(self, offset: int, length: int) -> bytes:
        _need(0 <= offset and offset + length <= self.size, self.name,
              f"{length} bytes at {offset:#x} lie outside the file")
        data = os.pread(self.fd, length, offset)
        _need(len(data) == length, self.name, "the file changed while being read")
        return data

    def load(self, mem, gpa: int, offset: int, length: int) -> None:
        """File bytes [offset, offset+length) to guest-physical gpa (GuestMemoryError when
        they do not fit in RAM)."""
        view = mem.view(gpa, length)
        done = 0
        while done < length:
            got = os.preadv(self.fd, [view[done:]], offset + done)
            _need(got > 0, self.name, "the file changed while being read")
            done += got


def _open_kernel(path: str | os.PathLike) -> tuple[int, int]:
    name = os.fspath(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise KernelError(f"kernel {name!r} does not exist") from None
    except IsADirectoryError:
        raise KernelError(f"kernel {name!r} is a directory") from None
    except OSError as exc:
        raise KernelError(f"cannot read kernel {name!r}: {exc.strerror}") from None
    st = os.fstat(fd)
    size = st.st_size
    if stat.S_ISDIR(st.st_mode):  # O_RDONLY opens a directory without complaint
        os.close(fd)
        raise KernelError(f"kernel {name!r} is a directory")
    if size > MAX_KERNEL_FILE:
        os.close(fd)
        raise KernelError(f"kernel {name!r} is {size >> 20} MiB; that is no kernel")
    return fd, size


def probe_kernel(path: str | os.PathLike) -> str:
    """"elf" or "bzimage" when `path` looks like a kernel we can load; KernelError otherwise.
    Only the headers are read (loading checks everything else)."""
    fd, _size = _open_kernel(path)
    try:
        head = _read_head(fd, os.fspath(path))
    finally:
        os.close(fd)
    return _kind(head, os.fspath(path))


def _read_head(fd: int, name: str) -> bytes:
    try:
        return os.pread(fd, 0x210, 0)
    except OSError as exc:
        raise KernelError(f"cannot read kernel {name!r}: {exc.strerror}") from None


def _kind(head: bytes, name: str) -> str:
    if head[:4] == ELF_MAGIC:
        return "elf"
    if head[0x202:0x206] == BZIMAGE_MAGIC:
        return "bzimage"
    raise KernelError(f"{name!r} is not a Linux kernel (neither ELF nor bzImage)")


def load_kernel(mem, path: str | os.PathLike, prefer_pvh: bool = True) -> LoadedKernel:
    """Load the kernel at `path` into guest memory `mem`, which must be fresh (all zero:
    a segment's bss is not written)."""
    name = os.fspath(path)
    fd, size = _open_kernel(path)
    try:
        f = _KernelFile(fd, size, name)
        kind = _kind(_read_head(fd, name), name)
        if kind == "elf":
            return load_elf(mem, f, prefer_pvh=prefer_pvh)
        return load_bzimage(mem, f)
    except GuestMemoryError as exc:
        raise KernelError(f"kernel {name!r} does not fit in guest memory: {exc}",
                          "give the VM more memory (--memory)") from None
    except OSError as exc:
        raise KernelError(f"cannot read kernel {name!r}: {exc.strerror}") from None
    finally:
        os.close(fd)


def _need(cond: bool, name: str, what: str) -> None:
    if not cond:
        raise KernelError(f"kernel {name!r} is malformed: {what}")


def load_elf(mem, f: _KernelFile, prefer_pvh: bool = True) -> LoadedKernel:
    name = f.name
    _need(f.size >= 64, name, "truncated ELF header")
    head = f.read(0, 64)
    ei_class, ei_data = head[4], head[5]
    _need(ei_class == 2 and ei_data == 1, name, "not a 64-bit little-endian ELF")
    (e_type, e_machine, _ver, e_entry, e_phoff, _shoff, _flags, _ehsize, e_phentsize,
     e_phnum) = struct.unpack_from("<HHIQQQIHHH", head, 16)
    _need(e_machine == 62, name, f"ELF machine {e_machine} is not x86-64")
    _need(e_type == 2, name, "not an executable ELF")
    _need(e_phentsize == 56 and 0 < e_phnum <= 64, name, "bad program header table")
    _need(e_phoff + e_phnum * 56 <= f.size, name, "program headers past end of file")
    phdrs = f.read(e_phoff, e_phnum * 56)
    end = 0
    pvh_entry = None
    for i in range(e_phnum):
        p_type, _pflags, p_offset, _vaddr, p_paddr, p_filesz, p_memsz, _align = struct.unpack_from(
            "<IIQQQQQQ", phdrs, i * 56)
        _need(p_offset + p_filesz <= f.size and p_filesz <= p_memsz, name,
              f"segment {i} lies outside the file")
        if p_type == PT_LOAD:
            _need(p_paddr >= L.HIGH_MEMORY, name, f"segment {i} loads below 1 MiB ({p_paddr:#x})")
            mem.view(p_paddr, p_memsz)  # the whole segment, bss included, must be RAM
            f.load(mem, p_paddr, p_offset, p_filesz)
            end = max(end, p_paddr + p_memsz)
        elif p_type == PT_NOTE and pvh_entry is None and p_filesz <= MAX_NOTES:
            pvh_entry = find_pvh_entry(f.read(p_offset, p_filesz))
    _need(end > 0, name, "no loadable segments")
    if prefer_pvh and pvh_entry is not None:
        return LoadedKernel("pvh", pvh_entry, end)
    # vmlinux's e_entry is the physical address of startup_64 (ENTRY(phys_startup_64)).
    _need(e_entry < end, name, f"entry point {e_entry:#x} outside the loaded image")
    return LoadedKernel("elf64", e_entry, end)


def find_pvh_entry(notes: bytes) -> int | None:
    """The XEN_ELFNOTE_PHYS32_ENTRY address in a PT_NOTE segment's bytes, if any."""
    pos = 0
    while pos + 12 <= len(notes):
        namesz, descsz, ntype = struct.unpack_from("<III", notes, pos)
        name_start = pos + 12
        desc_start = name_start + ((namesz + 3) & ~3)
        nxt = desc_start + ((descsz + 3) & ~3)
        if nxt > len(notes):
            return None
        if ntype == XEN_ELFNOTE_PHYS32_ENTRY and notes[name_start:name_start + namesz] == b"Xen\0":
            if descsz == 4:
                return struct.unpack_from("<I", notes, desc_start)[0]
            if descsz == 8:
                return struct.unpack_from("<Q", notes, desc_start)[0] & 0xFFFF_FFFF
        pos = nxt
    return None


def load_bzimage(mem, f: _KernelFile) -> LoadedKernel:
    name = f.name
    _need(f.size >= 0x1000, name, "truncated bzImage")
    head = f.read(0, 0x1000)
    setup_sects = head[SETUP_HEADER_OFFSET] or 4
    version = struct.unpack_from("<H", head, 0x206)[0]
    xloadflags = struct.unpack_from("<H", head, 0x236)[0]
    _need(version >= MIN_64BIT_PROTOCOL and xloadflags & XLF_KERNEL_64, name,
          f"boot protocol {version >> 8}.{version & 0xFF} without a 64-bit entry point")
    kernel_offset = (setup_sects + 1) * 512
    _need(kernel_offset < f.size, name, "setup code runs past the end of the file")
    # The header's own length: 0x202 + the byte at 0x201 (the jump offset), capped at a page.
    header_end = min(0x202 + head[0x201], 0x1000)
    load_addr = L.DEFAULT_KERNEL_ADDR
    length = f.size - kernel_offset
    f.load(mem, load_addr, kernel_offset, length)
    return LoadedKernel("bzimage", load_addr + 0x200, load_addr + length,
                        setup_header=head[SETUP_HEADER_OFFSET:header_end])

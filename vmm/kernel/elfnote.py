"""Reading ELF notes of a vmlinux: enough to find the PVH entry point a VMM jumps to.

Linux with CONFIG_PVH carries a Xen note (owner "Xen", type XEN_ELFNOTE_PHYS32_ENTRY) whose
payload is the 32-bit physical entry address.
"""
from __future__ import annotations

import struct
from pathlib import Path

XEN_ELFNOTE_PHYS32_ENTRY = 18
PT_NOTE = 4


def _notes(blob: bytes):
    if blob[:4] != b"\x7fELF" or blob[4] != 2 or blob[5] != 1:
        raise ValueError("not a little-endian 64-bit ELF file")
    phoff, = struct.unpack_from("<Q", blob, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", blob, 0x36)
    for i in range(phnum):
        p_type, _flags, p_offset, _va, _pa, p_filesz = struct.unpack_from("<IIQQQQ", blob, phoff + i * phentsize)
        if p_type != PT_NOTE:
            continue
        pos, end = p_offset, p_offset + p_filesz
        while pos + 12 <= end:
            namesz, descsz, ntype = struct.unpack_from("<III", blob, pos)
            name_start = pos + 12
            desc_start = name_start + ((namesz + 3) & ~3)
            name = blob[name_start:name_start + namesz].rstrip(b"\0")
            yield name, ntype, blob[desc_start:desc_start + descsz]
            pos = desc_start + ((descsz + 3) & ~3)


def pvh_entry(path: Path) -> int | None:
    """The PVH 32-bit entry address, or None when the kernel has no PVH note."""
    try:
        blob = Path(path).read_bytes()
        for name, ntype, desc in _notes(blob):
            if name == b"Xen" and ntype == XEN_ELFNOTE_PHYS32_ENTRY and len(desc) >= 4:
                return struct.unpack_from("<I", desc)[0]
    except (OSError, ValueError, struct.error):
        return None
    return None


def has_pvh_note(path: Path) -> bool:
    return pvh_entry(path) is not None

"""PVH boot: the hvm_start_info structure (xen/include/public/arch-x86/hvm/start_info.h).

    blob = start_info(cmdline_addr, memmap_addr, n_memmap, rsdp_addr, modlist_addr, n_mods)

Layout, version 1 (56 bytes): u32 magic 0x336ec578, u32 version, u32 flags,
u32 nr_modules, u64 modlist_paddr, u64 cmdline_paddr, u64 rsdp_paddr,
u64 memmap_paddr, u32 memmap_entries, u32 reserved. A module entry is
{u64 paddr, u64 size, u64 cmdline_paddr, u64 reserved} (32 bytes); a memory map
entry is {u64 addr, u64 size, u32 type, u32 reserved} (24 bytes), type as in e820.
"""
from __future__ import annotations

import struct

START_INFO_MAGIC = 0x336EC578
START_INFO_VERSION = 1
START_INFO_SIZE = 56
MODLIST_ENTRY_SIZE = 32
MEMMAP_ENTRY_SIZE = 24


def start_info(*, cmdline_addr: int, memmap_addr: int, memmap_entries: int, rsdp_addr: int = 0,
               modlist_addr: int = 0, nr_modules: int = 0) -> bytes:
    return struct.pack("<IIIIQQQQII", START_INFO_MAGIC, START_INFO_VERSION, 0, nr_modules,
                       modlist_addr if nr_modules else 0, cmdline_addr, rsdp_addr, memmap_addr,
                       memmap_entries, 0)


def module_entry(addr: int, size: int, cmdline_addr: int = 0) -> bytes:
    return struct.pack("<QQQQ", addr, size, cmdline_addr, 0)


def memmap(entries) -> bytes:
    return b"".join(struct.pack("<QQII", a, s, t, 0) for a, s, t in entries)

"""The guest's physical memory map (e820) from its RAM regions.

    entries = memory_map([(0, 512 << 20)])   # [(addr, size, type), ...]

Low RAM stops at the EBDA (0x9FC00); [EBDA, 1 MiB) is reserved (Linux scans it for the
ACPI RSDP, and our ACPI tables live there); then RAM from 1 MiB to the end of the first
region, and every region above the MMIO hole as is.
"""
from __future__ import annotations

import struct

E820_RAM = 1
E820_RESERVED = 2
EBDA_START = 0x9FC00
HIGH_MEMORY = 0x100000
MAX_ENTRIES = 128  # boot_params.e820_table holds 128


def memory_map(regions: list[tuple[int, int]]) -> list[tuple[int, int, int]]:
    """(addr, size, type) entries for RAM `regions` [(gpa, size)], sorted by address."""
    regions = sorted(regions)
    if not regions or regions[0][0] != 0:
        raise ValueError("the first RAM region must start at 0")
    low_end = regions[0][0] + regions[0][1]
    if low_end <= HIGH_MEMORY:
        raise ValueError("a Linux guest needs RAM above 1 MiB")
    entries = [(0, EBDA_START, E820_RAM),
               (EBDA_START, HIGH_MEMORY - EBDA_START, E820_RESERVED),
               (HIGH_MEMORY, low_end - HIGH_MEMORY, E820_RAM)]
    entries += [(gpa, size, E820_RAM) for gpa, size in regions[1:]]
    if len(entries) > MAX_ENTRIES:
        raise ValueError("too many memory regions for e820")
    return entries


def pack_boot_params_entries(entries) -> bytes:
    """struct boot_e820_entry[] (packed: u64 addr, u64 size, u32 type = 20 bytes)."""
    return b"".join(struct.pack("<QQI", a, s, t) for a, s, t in entries)

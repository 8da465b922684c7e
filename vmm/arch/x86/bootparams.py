"""The Linux 64-bit boot protocol's zero page (struct boot_params, 4 KiB).

Offsets from Documentation/arch/x86/zero-page.rst and boot.rst: acpi_rsdp_addr 0x070,
ext_ramdisk_image 0x0C0, ext_ramdisk_size 0x0C4, ext_cmd_line_ptr 0x0C8, e820_entries
0x1E8, the setup header from 0x1F1 (boot_flag 0x1FE, header "HdrS" 0x202, version 0x206,
type_of_loader 0x210, loadflags 0x211, ramdisk_image 0x218, ramdisk_size 0x21C,
heap_end_ptr 0x224, cmd_line_ptr 0x228, initrd_addr_max 0x22C), e820_table 0x2D0.
"""
from __future__ import annotations

import struct

from vmm.arch.x86.e820 import MAX_ENTRIES, pack_boot_params_entries

ZERO_PAGE_SIZE = 4096
OFF = {
    "acpi_rsdp_addr": 0x070,
    "ext_ramdisk_image": 0x0C0,
    "ext_ramdisk_size": 0x0C4,
    "ext_cmd_line_ptr": 0x0C8,
    "e820_entries": 0x1E8,
    "setup_header": 0x1F1,
    "boot_flag": 0x1FE,
    "header": 0x202,
    "version": 0x206,
    "type_of_loader": 0x210,
    "loadflags": 0x211,
    "ramdisk_image": 0x218,
    "ramdisk_size": 0x21C,
    "heap_end_ptr": 0x224,
    "cmd_line_ptr": 0x228,
    "initrd_addr_max": 0x22C,
    "cmdline_size": 0x238,
    "e820_table": 0x2D0,
}
BOOT_FLAG = 0xAA55
HDRS = 0x53726448            # "HdrS"
PROTOCOL_VERSION = 0x020F
LOADER_UNDEFINED = 0xFF      # "type_of_loader: 0xFF when the boot loader has no assigned id"
LOADED_HIGH = 0x01
CAN_USE_HEAP = 0x80
KEEP_SEGMENTS = 0x40


def zero_page(*, cmdline_addr: int, e820, initrd: tuple[int, int] | None = None,
              rsdp_addr: int = 0, setup_header: bytes = b"") -> bytes:
    """A filled boot_params. `setup_header` (bzImage bytes from 0x1F1) is copied first so
    the kernel sees its own header; the fields a loader owns are then written over it."""
    if len(e820) > MAX_ENTRIES:
        raise ValueError("too many e820 entries")
    page = bytearray(ZERO_PAGE_SIZE)
    base = OFF["setup_header"]
    page[base:base + len(setup_header)] = setup_header[:ZERO_PAGE_SIZE - base]

    def put(field: str, fmt: str, value: int) -> None:
        struct.pack_into("<" + fmt, page, OFF[field], value)

    put("acpi_rsdp_addr", "Q", rsdp_addr)
    put("boot_flag", "H", BOOT_FLAG)
    put("header", "I", HDRS)
    if not setup_header:
        put("version", "H", PROTOCOL_VERSION)
    put("type_of_loader", "B", LOADER_UNDEFINED)
    put("loadflags", "B", page[OFF["loadflags"]] | LOADED_HIGH | CAN_USE_HEAP | KEEP_SEGMENTS)
    put("heap_end_ptr", "H", 0xFE00)
    put("cmd_line_ptr", "I", cmdline_addr & 0xFFFF_FFFF)
    put("ext_cmd_line_ptr", "I", cmdline_addr >> 32)
    if initrd:
        addr, size = initrd
        put("ramdisk_image", "I", addr & 0xFFFF_FFFF)
        put("ramdisk_size", "I", size & 0xFFFF_FFFF)
        put("ext_ramdisk_image", "I", addr >> 32)
        put("ext_ramdisk_size", "I", size >> 32)
    put("e820_entries", "B", len(e820))
    table = pack_boot_params_entries(e820)
    page[OFF["e820_table"]:OFF["e820_table"] + len(table)] = table
    return bytes(page)


def initrd_addr_max(setup_header: bytes) -> int:
    """The highest address the initrd may end at, from a bzImage header (else 4 GiB - 1)."""
    off = OFF["initrd_addr_max"] - OFF["setup_header"]
    if len(setup_header) >= off + 4:
        value = struct.unpack_from("<I", setup_header, off)[0]
        if value:
            return value
    return 0xFFFF_FFFF

"""The ELF vmlinux inside a bzImage, so the lab boots through the PVH entry.

QEMU loads an ELF kernel with a PVH note directly (no firmware real-mode path, no
decompression under TCG): that takes the lab's boot from ~9 s to ~6 s here. The payload's
place is in the x86 boot protocol header (setup_sects at 0x1f1, payload_offset/length at
0x248/0x24c, protocol 2.08+).
"""
from __future__ import annotations

import lzma
import struct
import zlib
from pathlib import Path

from vmm.lab.errors import LabError


def payload(bz: bytes) -> bytes:
    if len(bz) < 0x250 or bz[0x202:0x206] != b"HdrS":
        raise LabError("not a bzImage (no HdrS boot header)")
    version, = struct.unpack_from("<H", bz, 0x206)
    if version < 0x208:
        raise LabError(f"boot protocol {version:#x} has no payload fields (need 2.08+)")
    setup_sects = bz[0x1F1] or 4
    offset, length = struct.unpack_from("<II", bz, 0x248)
    start = (setup_sects + 1) * 512 + offset
    return bz[start:start + length]


def decompress(data: bytes) -> bytes:
    if data.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data)
    if data.startswith(b"\x1f\x8b"):
        return zlib.decompressobj(wbits=31).decompress(data)
    if data.startswith(b"\x28\xb5\x2f\xfd"):
        import zstandard

        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    raise LabError(f"unknown kernel compression (magic {data[:6].hex()})", "the lab knows xz, gzip and zstd")


def extract_vmlinux(bzimage: Path, out: Path) -> Path:
    elf = decompress(payload(bzimage.read_bytes()))
    if not elf.startswith(b"\x7fELF"):
        raise LabError(f"the payload of {bzimage} is not an ELF file")
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(elf)
    tmp.replace(out)
    return out

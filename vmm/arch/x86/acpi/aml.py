"""A tiny AML encoder: just the terms our DSDT needs (ACPI 6.5 chapter 20).

    aml.name("_S5_", aml.package([5, 0]))
    aml.scope("\\_SB_", [aml.device("PEVT", [aml.name("_HID", aml.string("QEMU0001")),
                                             aml.name("_CRS", aml.resource_template(
                                                 [aml.io_port(0x505, 1)]))])])

Every function returns bytes. Names are 4-character segments (shorter ones are padded
with '_'), optionally with a root '\\' prefix or dotted paths.
"""
from __future__ import annotations

import struct

ZERO_OP, ONE_OP, ONES_OP = 0x00, 0x01, 0xFF
BYTE_PREFIX, WORD_PREFIX, DWORD_PREFIX, STRING_PREFIX, QWORD_PREFIX = 0x0A, 0x0B, 0x0C, 0x0D, 0x0E
NAME_OP, SCOPE_OP, BUFFER_OP, PACKAGE_OP = 0x08, 0x10, 0x11, 0x12
EXT_OP_PREFIX, DEVICE_OP = 0x5B, 0x82
ROOT_CHAR, DUAL_NAME_PREFIX, MULTI_NAME_PREFIX = 0x5C, 0x2E, 0x2F
IO_PORT_DESCRIPTOR, END_TAG = 0x47, 0x79


def pkg_length(body_len: int) -> bytes:
    """PkgLength for a body of `body_len` bytes; the encoded length counts itself."""
    if body_len + 1 < 0x40:
        return bytes([body_len + 1])
    for extra in (1, 2, 3):
        total = body_len + 1 + extra
        if total < 1 << (4 + 8 * extra):
            lead = (extra << 6) | (total & 0x0F)
            rest = (total >> 4).to_bytes(extra, "little")
            return bytes([lead]) + rest
    raise ValueError("AML package too large")


def _seg(seg: str) -> bytes:
    if not 1 <= len(seg) <= 4 or not seg.replace("_", "A").isalnum() or seg[0].isdigit():
        raise ValueError(f"bad AML name segment {seg!r}")
    return seg.upper().ljust(4, "_").encode()


def name_string(path: str) -> bytes:
    prefix = b""
    if path.startswith("\\"):
        prefix, path = b"\\", path[1:]
    segs = [s for s in path.split(".") if s]
    if not segs:
        return prefix + b"\0"
    if len(segs) == 1:
        return prefix + _seg(segs[0])
    if len(segs) == 2:
        return prefix + bytes([DUAL_NAME_PREFIX]) + b"".join(map(_seg, segs))
    return prefix + bytes([MULTI_NAME_PREFIX, len(segs)]) + b"".join(map(_seg, segs))


def integer(value: int) -> bytes:
    if value == 0:
        return bytes([ZERO_OP])
    if value == 1:
        return bytes([ONE_OP])
    for limit, prefix, fmt in ((0xFF, BYTE_PREFIX, "<B"), (0xFFFF, WORD_PREFIX, "<H"),
                               (0xFFFF_FFFF, DWORD_PREFIX, "<I"),
                               (0xFFFF_FFFF_FFFF_FFFF, QWORD_PREFIX, "<Q")):
        if 0 <= value <= limit:
            return bytes([prefix]) + struct.pack(fmt, value)
    raise ValueError(f"integer {value} out of AML range")


def string(text: str) -> bytes:
    raw = text.encode("ascii")
    if b"\0" in raw:
        raise ValueError("AML strings cannot contain NUL")
    return bytes([STRING_PREFIX]) + raw + b"\0"


def _data(obj) -> bytes:
    if isinstance(obj, bytes):
        return obj
    if isinstance(obj, int):
        return integer(obj)
    if isinstance(obj, str):
        return string(obj)
    raise TypeError(f"cannot encode {obj!r} as AML data")


def name(path: str, value) -> bytes:
    return bytes([NAME_OP]) + name_string(path) + _data(value)


def package(elements) -> bytes:
    if len(elements) > 255:
        raise ValueError("a Package holds at most 255 elements")
    body = bytes([len(elements)]) + b"".join(_data(e) for e in elements)
    return bytes([PACKAGE_OP]) + pkg_length(len(body)) + body


def buffer(data: bytes) -> bytes:
    body = integer(len(data)) + data
    return bytes([BUFFER_OP]) + pkg_length(len(body)) + body


def scope(path: str, terms) -> bytes:
    body = name_string(path) + b"".join(terms)
    return bytes([SCOPE_OP]) + pkg_length(len(body)) + body


def device(path: str, terms) -> bytes:
    body = name_string(path) + b"".join(terms)
    return bytes([EXT_OP_PREFIX, DEVICE_OP]) + pkg_length(len(body)) + body


def io_port(base: int, length: int, decode16: bool = True) -> bytes:
    """Small I/O port descriptor: fixed range [base, base+length)."""
    return struct.pack("<BBHHBB", IO_PORT_DESCRIPTOR, 1 if decode16 else 0, base, base, 1, length)


def memory32_fixed(base: int, length: int, writable: bool = True) -> bytes:
    """Large Memory32Fixed descriptor (type 0x86, 9 data bytes)."""
    return struct.pack("<BHBII", 0x86, 9, 1 if writable else 0, base, length)


def interrupt(irq: int, edge: bool = True, active_high: bool = True) -> bytes:
    """Large Extended Interrupt descriptor (type 0x89) for one consumer interrupt."""
    flags = 0x01 | (0x02 if edge else 0) | (0 if active_high else 0x04)
    return struct.pack("<BHBBI", 0x89, 6, flags, 1, irq)


def resource_template(descriptors) -> bytes:
    """A ResourceTemplate buffer: the descriptors plus an end tag (checksum 0 = none)."""
    return buffer(b"".join(descriptors) + bytes([END_TAG, 0]))

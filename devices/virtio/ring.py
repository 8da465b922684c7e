"""Split-virtqueue layout, the descriptor chain handed to devices, and queue state.

Shared by the Cython queue (`_queue.pyx`) and its pure-Python twin (`queue_py.py`) so
both check ring placement the same way and hand devices the same `Chain` objects.

Layout (virtio 1.2 §2.7): descriptor table of 16-byte entries {u64 addr, u32 len,
u16 flags, u16 next}, 16-aligned; avail ring {u16 flags, u16 idx, u16 ring[n],
u16 used_event}, 2-aligned; used ring {u16 flags, u16 idx, {u32 id, u32 len}[n],
u16 avail_event}, 4-aligned.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable

from .constants import MAX_QUEUE_SIZE
from .errors import QueueCorrupt

DESC_SIZE = 16
DESC_F_NEXT = 1
DESC_F_WRITE = 2
DESC_F_INDIRECT = 4
AVAIL_F_NO_INTERRUPT = 1
USED_F_NO_NOTIFY = 1


def desc_table_bytes(size: int) -> int:
    return DESC_SIZE * size


def avail_ring_bytes(size: int) -> int:
    return 6 + 2 * size


def used_ring_bytes(size: int) -> int:
    return 6 + 8 * size


@dataclasses.dataclass(frozen=True)
class QueueState:
    """Everything needed to rebuild a queue after reset-free restore (snapshots)."""

    size: int
    ready: bool
    desc_addr: int
    avail_addr: int
    used_addr: int
    next_avail: int = 0
    next_used: int = 0
    num_added: int = 0  # used entries added since the last notification check


def check_layout(memory, size: int, desc: int, avail: int, used: int):
    """Validate a queue's size and ring addresses; return views of the three rings.

    Raises QueueCorrupt when the driver placed a ring outside guest RAM, misaligned it,
    or chose a size that is not a power of two in [1, 32768].
    """
    if size < 1 or size > MAX_QUEUE_SIZE or size & (size - 1):
        raise QueueCorrupt(f"queue size {size} is not a power of two in 1..{MAX_QUEUE_SIZE}")
    for name, addr, align in (("descriptor table", desc, 16), ("avail ring", avail, 2), ("used ring", used, 4)):
        if addr % align:
            raise QueueCorrupt(f"{name} at {addr:#x} is not {align}-byte aligned")
    try:
        return (
            memory.view(desc, desc_table_bytes(size)),
            memory.view(avail, avail_ring_bytes(size)),
            memory.view(used, used_ring_bytes(size)),
        )
    except ValueError as e:  # GuestMemoryError is a ValueError
        raise QueueCorrupt(f"ring outside guest memory: {e}") from None


class Chain:
    """One request: the head index and its buffers as checked views into guest RAM.

    `readable` are the device-readable buffers in order, `writable` the device-writable
    ones. Every view was produced by GuestMemory.view(), so it lies inside guest RAM.
    """

    __slots__ = ("head", "readable", "writable")

    def __init__(self, head: int, readable: list, writable: list) -> None:
        self.head = head
        self.readable = readable
        self.writable = writable

    @property
    def readable_len(self) -> int:
        return sum(len(v) for v in self.readable)

    @property
    def writable_len(self) -> int:
        return sum(len(v) for v in self.writable)

    def read(self, offset: int = 0, length: int | None = None) -> bytes:
        """Copy `length` readable bytes from `offset` (across buffers)."""
        return bytes(_slice(self.readable, offset, length))

    def readable_views(self, offset: int, length: int | None = None) -> list:
        """The readable buffers from `offset`, `length` bytes long, as views (no copy)."""
        return _views(self.readable, offset, length)

    def writable_views(self, offset: int, length: int | None = None) -> list:
        """The writable buffers from `offset`, `length` bytes long, as views (no copy)."""
        return _views(self.writable, offset, length)

    def write(self, offset: int, data) -> int:
        """Copy `data` into the writable buffers at `offset`; return bytes written."""
        done = 0
        for v in _views(self.writable, offset, len(data)):
            v[:] = data[done:done + len(v)]
            done += len(v)
        return done


def _views(bufs: Iterable, offset: int, length: int | None) -> list:
    out = []
    remaining = -1 if length is None else length
    for v in bufs:
        if remaining == 0:
            break
        n = len(v)
        if offset >= n:
            offset -= n
            continue
        end = n if remaining < 0 else min(n, offset + remaining)
        out.append(v[offset:end])
        if remaining > 0:
            remaining -= end - offset
        offset = 0
    return out


def _slice(bufs: Iterable, offset: int, length: int | None) -> bytearray:
    out = bytearray()
    for v in _views(bufs, offset, length):
        out += v
    return out


def resolve(memory, head: int, descs: list) -> Chain:
    """Turn (addr, len, flags) triples into a Chain of checked views.

    Raises ValueError (GuestMemoryError) if a buffer is outside guest RAM, or
    IndexError if a readable buffer follows a writable one; callers turn these into
    ChainError.
    """
    readable: list = []
    writable: list = []
    for addr, length, flags in descs:
        if flags & DESC_F_WRITE:
            if length:
                writable.append(memory.view(addr, length))
        else:
            if writable:
                raise IndexError("device-readable descriptor after a device-writable one")
            if length:
                readable.append(memory.view(addr, length))
    return Chain(head, readable, writable)

"""Pure-Python split virtqueue: the readable twin of `_queue.pyx`, with the same API.

Tests run against both; `queue.SplitQueue` picks the compiled one. Every index the
guest supplies (avail idx, head, next, indirect table length) is checked here, and every
buffer becomes a view through GuestMemory.view(), which checks it against guest RAM.
"""
from __future__ import annotations

import struct

from .errors import ChainError, QueueCorrupt, QueueError
from .ring import (
    DESC_F_INDIRECT, DESC_F_NEXT, DESC_SIZE, AVAIL_F_NO_INTERRUPT, Chain, QueueState,
    check_layout, resolve,
)

_DESC = struct.Struct("<QIHH")
_U16 = struct.Struct("<H")
_USED_ELEM = struct.Struct("<II")


class SplitQueue:
    """One split virtqueue over guest memory (device side)."""

    def __init__(self, memory, size: int, desc_addr: int, avail_addr: int, used_addr: int, *,
                 event_idx: bool = False, indirect: bool = False,
                 next_avail: int = 0, next_used: int = 0, num_added: int = 0) -> None:
        self.memory = memory
        self.size = size
        self.desc_addr, self.avail_addr, self.used_addr = desc_addr, avail_addr, used_addr
        self._desc, self._avail, self._used = check_layout(memory, size, desc_addr, avail_addr, used_addr)
        self.event_idx = event_idx
        self.indirect = indirect
        self.next_avail = next_avail & 0xFFFF
        self.next_used = next_used & 0xFFFF
        self.num_added = num_added

    def pending(self) -> int:
        """How many chains the driver has made available and we have not popped."""
        avail_idx = _U16.unpack_from(self._avail, 2)[0]
        n = (avail_idx - self.next_avail) & 0xFFFF
        if n > self.size:
            raise QueueCorrupt(f"avail idx {avail_idx} is {n} ahead of {self.next_avail} (queue size {self.size})")
        return n

    def pop(self) -> Chain | None:
        """The next available chain, or None. Raises ChainError (request consumed) or QueueCorrupt."""
        if not self.pending():
            return None
        head = _U16.unpack_from(self._avail, 4 + 2 * (self.next_avail % self.size))[0]
        self.next_avail = (self.next_avail + 1) & 0xFFFF
        if self.event_idx:
            _U16.pack_into(self._used, 4 + 8 * self.size, self.next_avail)
        if head >= self.size:
            raise ChainError(f"head index {head} >= queue size {self.size}", head)
        descs = self._walk(head)
        try:
            return resolve(self.memory, head, descs)
        except (ValueError, IndexError) as e:
            raise ChainError(f"chain {head}: {e}", head) from None

    def _walk(self, head: int) -> list:
        descs = []
        idx = head
        while True:
            if len(descs) >= self.size:
                raise ChainError(f"chain {head} is longer than the queue or loops", head)
            addr, length, flags, nxt = _DESC.unpack_from(self._desc, DESC_SIZE * idx)
            if flags & DESC_F_INDIRECT:
                if descs or flags & DESC_F_NEXT:
                    raise ChainError(f"chain {head}: indirect descriptor not alone at the head", head)
                return self._walk_indirect(head, addr, length)
            descs.append((addr, length, flags))
            if not flags & DESC_F_NEXT:
                return descs
            if nxt >= self.size:
                raise ChainError(f"chain {head}: next index {nxt} >= queue size", head)
            idx = nxt

    def _walk_indirect(self, head: int, addr: int, length: int) -> list:
        if not self.indirect:
            raise ChainError(f"chain {head}: indirect descriptor without VIRTIO_F_INDIRECT_DESC", head)
        if length == 0 or length % DESC_SIZE or length // DESC_SIZE > self.size:
            raise ChainError(f"chain {head}: bad indirect table length {length}", head)
        n = length // DESC_SIZE
        try:
            table = self.memory.view(addr, length)
        except ValueError as e:
            raise ChainError(f"chain {head}: indirect table outside guest memory: {e}", head) from None
        descs = []
        idx = 0
        while True:
            if len(descs) >= n:
                raise ChainError(f"chain {head}: indirect table loops", head)
            a, ln, flags, nxt = _DESC.unpack_from(table, DESC_SIZE * idx)
            if flags & DESC_F_INDIRECT:
                raise ChainError(f"chain {head}: nested indirect descriptor", head)
            descs.append((a, ln, flags))
            if not flags & DESC_F_NEXT:
                return descs
            if nxt >= n:
                raise ChainError(f"chain {head}: indirect next {nxt} >= table size {n}", head)
            idx = nxt

    def undo_pop(self, count: int = 1) -> None:
        """Put the last `count` popped chains back (the device could not serve them yet)."""
        self.next_avail = (self.next_avail - count) & 0xFFFF
        if self.event_idx:
            _U16.pack_into(self._used, 4 + 8 * self.size, self.next_avail)

    def add_used(self, head: int, length: int) -> None:
        """Return chain `head` to the driver with `length` bytes written."""
        if not 0 <= head < self.size or not 0 <= length <= 0xFFFFFFFF:
            raise QueueError(f"add_used({head}, {length}) out of range for queue size {self.size}")
        _USED_ELEM.pack_into(self._used, 4 + 8 * (self.next_used % self.size), head, length)
        self.next_used = (self.next_used + 1) & 0xFFFF
        _U16.pack_into(self._used, 2, self.next_used)
        self.num_added += 1

    def needs_notification(self) -> bool:
        """Whether the driver wants an interrupt for the used entries added since last asked."""
        added, self.num_added = self.num_added, 0
        if not added:
            return False
        if not self.event_idx:
            return not (_U16.unpack_from(self._avail, 0)[0] & AVAIL_F_NO_INTERRUPT)
        if added >= 0x10000:
            return True
        used_event = _U16.unpack_from(self._avail, 4 + 2 * self.size)[0]
        new, old = self.next_used, (self.next_used - added) & 0xFFFF
        return ((new - used_event - 1) & 0xFFFF) < ((new - old) & 0xFFFF)

    def state(self) -> QueueState:
        return QueueState(self.size, True, self.desc_addr, self.avail_addr, self.used_addr,
                          self.next_avail, self.next_used, self.num_added)

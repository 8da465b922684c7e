"""The virtio device contract every device (block, net, vsock, rng, balloon) implements.

A device is Inactive until the driver sets DRIVER_OK; the transport then calls
`activate(Activated(...))` and only from then on can the device reach guest memory,
its queues and the interrupt. `reset()` returns it to Inactive. The common queue drain
loop lives here: a malformed chain is returned to the driver with length 0 and counted,
a corrupt queue marks the device DEVICE_NEEDS_RESET through the transport.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Callable

from .constants import F_EVENT_IDX, F_INDIRECT_DESC, F_VERSION_1, DeviceType, bit
from .errors import ChainError, QueueCorrupt

COMMON_FEATURES = bit(F_VERSION_1) | bit(F_EVENT_IDX) | bit(F_INDIRECT_DESC)


def pop_valid(q, count_invalid: Callable[[], None]):
    """The next well-formed chain of queue `q`, or None when it is empty. A malformed
    chain is counted with `count_invalid()` and handed back to the driver as used with
    length 0, never processed."""
    while True:
        try:
            return q.pop()
        except ChainError as e:
            count_invalid()
            if e.head < q.size:
                q.add_used(e.head, 0)


def drain_eventfd(fd: int) -> None:
    """Consume an eventfd's counter if it fired (kicks coalesce: one read clears them all)."""
    try:
        os.eventfd_read(fd)
    except BlockingIOError:
        pass


@dataclasses.dataclass
class Activated:
    """What an activated device holds: guest memory, queues, kick eventfds and callbacks."""

    memory: object  # devices.interfaces.GuestMemory
    queues: list  # SplitQueue per queue index (None for a queue the driver left unused)
    queue_events: list  # eventfd per queue: written by KVM's ioeventfd or by a QueueNotify write
    events: object  # devices.interfaces.EventRegistry
    signal_used: Callable[[int], None]  # raise the used-buffer interrupt for a queue
    fail: Callable[[Exception], None]  # mark the device DEVICE_NEEDS_RESET


class VirtioDevice:
    """Base class: features, config space, activation and the queue drain loop."""

    device_type: DeviceType
    queue_max_sizes: tuple = (256,)

    def __init__(self, features: int = 0) -> None:
        self.avail_features = COMMON_FEATURES | features
        self.acked_features = 0
        self.active: Activated | None = None
        self.config_generation = 0
        self.on_config_change: Callable[[], None] | None = None
        self.invalid_chains = 0

    # -- features and config ---------------------------------------------------------
    def has_feature(self, n: int) -> bool:
        return bool(self.acked_features & bit(n))

    def config_space(self) -> bytes:
        """The device-specific configuration structure, as the driver sees it."""
        return b""

    def write_config(self, offset: int, data: bytes) -> None:
        """A driver write into config space; read-only by default (ignored)."""

    def config_changed(self) -> None:
        """Host-side config change: bump the generation and raise the config interrupt."""
        self.config_generation = (self.config_generation + 1) & 0xFFFFFFFF
        if self.on_config_change is not None:
            self.on_config_change()

    # -- lifecycle -------------------------------------------------------------------
    def activate(self, act: Activated) -> None:
        """DRIVER_OK: take memory and queues, and start listening on the kick eventfds."""
        self.active = act
        for index, fd in enumerate(act.queue_events):
            if act.queues[index] is not None:
                act.events.add_reader(fd, lambda i=index: self.on_kick(i))
        self.activated()

    def activated(self) -> None:
        """Hook for devices that start workers or backends on activation."""

    def reset(self) -> None:
        """Back to Inactive: stop listening, forget memory and queues."""
        act, self.active = self.active, None
        if act is None:
            return
        for index, fd in enumerate(act.queue_events):
            if act.queues[index] is not None:
                act.events.remove_reader(fd)
        self.deactivated(act)

    def deactivated(self, act: Activated) -> None:
        """Hook for devices that stop workers or backends on reset."""

    def close(self) -> None:
        """Release host resources (files, sockets) for good."""
        self.reset()

    # -- queue processing ------------------------------------------------------------
    def on_kick(self, index: int) -> None:
        """A queue's eventfd fired: consume the counter and process the queue."""
        act = self.active
        if act is None:
            return
        drain_eventfd(act.queue_events[index])
        self.process_queue(index)

    def process_queue(self, index: int) -> None:
        """Handle new buffers on queue `index` (devices override)."""

    def pop_valid(self, q):
        """The next well-formed chain of queue `q` (see `pop_valid`), counting malformed
        ones in `invalid_chains`."""
        return pop_valid(q, self._count_invalid_chain)

    def _count_invalid_chain(self) -> None:
        self.invalid_chains += 1

    def drain(self, index: int, handler: Callable) -> int:
        """Pop every available chain of queue `index`, pass it to `handler` (which returns
        the number of bytes it wrote, or None to keep the chain for later), return it as
        used, and interrupt the driver if it asked. Returns the number of chains handled."""
        act = self.active
        if act is None or act.queues[index] is None:
            return 0
        q = act.queues[index]
        done = 0
        try:
            while True:
                chain = self.pop_valid(q)
                if chain is None:
                    break
                written = handler(chain)
                if written is None:
                    break
                q.add_used(chain.head, written)
                done += 1
            if q.needs_notification():
                act.signal_used(index)
        except QueueCorrupt as e:
            act.fail(e)
        return done

    def complete(self, index: int, head: int, written: int) -> None:
        """Return one chain that was held back (asynchronous completion) and notify."""
        act = self.active
        if act is None or act.queues[index] is None:
            return
        q = act.queues[index]
        q.add_used(head, written)
        if q.needs_notification():
            act.signal_used(index)

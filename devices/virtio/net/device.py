"""The virtio-net device: rx/tx queues between the guest and a TAP, on its own thread.

The thread polls the TAP (for input only while the guest has rx buffers and the rx
limiter allows), the two queue eventfds (KVM's ioeventfds) and a wake eventfd. A frame
from the TAP is read straight into the next rx chain's buffers; with MRG_RXBUF what does
not fit there lands in a bounce buffer and is spread over further chains, popped only as
needed (a chain is never popped and handed back for room, which would leave the guest's
EVENT_IDX kick threshold behind buffers it already posted). One tx chain is one frame
(writev straight from the guest's buffers), vnet header included.
"""
from __future__ import annotations

import os
import select
import struct
import threading
import time

from ...ratelimiter import RateLimiter
from ..constants import DeviceType, bit
from ..device import Activated, VirtioDevice, drain_eventfd
from ..errors import QueueCorrupt
from . import (
    F_CSUM, F_GUEST_CSUM, F_GUEST_ECN, F_GUEST_TSO4, F_GUEST_TSO6, F_HOST_ECN, F_HOST_TSO4, F_HOST_TSO6,
    F_MAC, F_MRG_RXBUF, F_STATUS, MAX_FRAME, MAX_PLAIN_FRAME, NUM_BUFFERS_OFFSET, QUEUE_SIZE, RX_QUEUE, STATUS_LINK_UP, TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6,
    TUN_F_TSO_ECN, TX_QUEUE, VNET_HDR_SIZE, NetError,
)
from .. import _queue
from . import _fast
from .metrics import NetMetrics
from .persist import NetState
from .tap import configure, open_tap

OFFERED = (F_CSUM, F_GUEST_CSUM, F_MAC, F_GUEST_TSO4, F_GUEST_TSO6, F_GUEST_ECN, F_HOST_TSO4, F_HOST_TSO6,
           F_HOST_ECN, F_MRG_RXBUF, F_STATUS)


def parse_mac(mac: str) -> bytes:
    parts = mac.split(":")
    if len(parts) != 6 or not all(len(p) == 2 for p in parts):
        raise NetError(f"bad MAC address {mac!r}", hint="write it as six hex pairs, e.g. 52:54:00:12:34:56")
    try:
        return bytes(int(p, 16) for p in parts)
    except ValueError:
        raise NetError(f"bad MAC address {mac!r}", hint="write it as six hex pairs") from None


class NetDevice(VirtioDevice):
    """virtio-net on TAP `tap_fd` (opened by `tap.open_tap`, owned by the device)."""

    device_type = DeviceType.NET
    queue_max_sizes = (QUEUE_SIZE, QUEUE_SIZE)

    def __init__(self, tap_fd: int, mac: str, tap_name: str = "", rx_rate_limiter: RateLimiter | None = None,
                 tx_rate_limiter: RateLimiter | None = None) -> None:
        super().__init__(sum(bit(f) for f in OFFERED))
        self.tap_fd, self.tap_name, self.mac = tap_fd, tap_name, mac
        self._mac = parse_mac(mac)
        self.rx_limiter, self.tx_limiter = rx_rate_limiter, tx_rate_limiter
        self.metrics = NetMetrics()
        self._thread: threading.Thread | None = None
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._stopping = False
        self._bounce = memoryview(bytearray(MAX_FRAME))
        self._partial: _Partial | None = None  # a frame waiting for more rx buffers (MRG_RXBUF)

    def config_space(self) -> bytes:
        # virtio_net_config: mac[6], status, max_virtqueue_pairs, mtu
        return self._mac + struct.pack("<HHH", STATUS_LINK_UP, 1, 0)

    def offloads(self) -> int:
        """TUN_F_* the guest can take, from what it acked."""
        f = 0
        if self.has_feature(F_GUEST_CSUM):
            f |= TUN_F_CSUM
            f |= TUN_F_TSO4 if self.has_feature(F_GUEST_TSO4) else 0
            f |= TUN_F_TSO6 if self.has_feature(F_GUEST_TSO6) else 0
            f |= TUN_F_TSO_ECN if f & (TUN_F_TSO4 | TUN_F_TSO6) and self.has_feature(F_GUEST_ECN) else 0
        return f

    # -- lifecycle -------------------------------------------------------------------
    def activate(self, act: Activated) -> None:
        configure(self.tap_fd, VNET_HDR_SIZE, self.offloads())
        self.active = act
        self._stopping = False
        self._thread = threading.Thread(target=self._run, args=(act,), name=f"virtio-net {self.mac}", daemon=True)
        self._thread.start()

    def deactivated(self, act: Activated) -> None:
        thread, self._thread = self._thread, None
        self._stopping = True
        os.eventfd_write(self._wake, 1)
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def close(self) -> None:
        self.reset()
        for fd in (self.tap_fd, self._wake):
            if fd >= 0:
                os.close(fd)
        self.tap_fd = self._wake = -1

    # -- the device thread -----------------------------------------------------------
    def _run(self, act: Activated) -> None:
        poller = select.poll()
        rx_kick, tx_kick = act.queue_events[RX_QUEUE], act.queue_events[TX_QUEUE]
        for fd in (rx_kick, tx_kick, self._wake):
            poller.register(fd, select.POLLIN)
        self.rx_room, self.tap_readable, self.tx_blocked = True, True, False
        deadline = None
        while not self._stopping:
            mask = (select.POLLIN if self.rx_room and not self.tap_readable else 0)
            mask |= select.POLLOUT if self.tx_blocked else 0
            if mask:
                poller.register(self.tap_fd, mask)
            else:
                _unregister(poller, self.tap_fd)
            timeout = None if deadline is None else max(1, int((deadline - time.monotonic()) * 1000))
            for fd, ev in poller.poll(timeout):
                if fd == self.tap_fd:
                    self.tap_readable = self.tap_readable or bool(ev & select.POLLIN)
                    self.tx_blocked = self.tx_blocked and not ev & select.POLLOUT
                else:
                    drain_eventfd(fd)
                    self.rx_room = self.rx_room or fd == rx_kick
            if self._stopping:
                return
            try:
                waits = [self._tx(act), self._rx(act)]
            except QueueCorrupt as e:
                act.fail(e)
                return
            waits = [w for w in waits if w is not None]
            deadline = time.monotonic() + min(waits) if waits else None

    def _tx(self, act: Activated) -> float | None:
        q, wait = act.queues[TX_QUEUE], None
        if q is None or self.tx_blocked:
            return None
        # The C path (no limiter to consult per frame) stops at the first chain it cannot take.
        fast = self.tx_limiter is None and isinstance(q, _queue.SplitQueue)
        while True:
            if fast:
                stop, packets, nbytes, errors = _fast.tx(q, self.tap_fd)
                self._count(packets, nbytes, errors, tx=True)
                if stop == _fast.STOP_EMPTY:
                    break
                if stop == _fast.STOP_BLOCKED:
                    self.tx_blocked = True
                    break
            chain = self.pop_valid(q)
            if chain is None:
                break
            wait = self._tx_frame(q, chain)
            if wait is not None or self.tx_blocked:
                break
        if q.needs_notification():
            act.signal_used(TX_QUEUE)
        return wait

    def _tx_frame(self, q, chain) -> float | None:
        """One tx chain the Python way; seconds to wait if the limiter says so."""
        n = chain.readable_len
        if n < VNET_HDR_SIZE or n > MAX_FRAME or chain.writable:
            self.metrics.tx_malformed += 1
            q.add_used(chain.head, 0)
            return None
        if self.tx_limiter is not None and not self.tx_limiter.consume(n - VNET_HDR_SIZE):
            self.metrics.tx_throttled += 1
            q.undo_pop()
            return self.tx_limiter.wait_time(n - VNET_HDR_SIZE)
        try:
            os.writev(self.tap_fd, chain.readable)
        except BlockingIOError:
            q.undo_pop()
            self.tx_blocked = True
            return None
        except OSError:
            self.metrics.tap_errors += 1  # e.g. the TAP is down: the frame is lost, as on a wire
        else:
            self._count(1, n - VNET_HDR_SIZE, 0, tx=True)
        q.add_used(chain.head, 0)
        return None

    def _count(self, packets: int, nbytes: int, errors: int, tx: bool) -> None:
        m = self.metrics
        if tx:
            m.tx_packets += packets
            m.tx_bytes += nbytes
        else:
            m.rx_packets += packets
            m.rx_bytes += nbytes
        m.tap_errors += errors

    def _rx(self, act: Activated) -> float | None:
        q, wait = act.queues[RX_QUEUE], None
        if q is None or not (self.tap_readable or self._partial):
            return None
        # The C path: mergeable buffers and no limiter to consult per frame.
        fast = (self.rx_limiter is None and self.has_feature(F_MRG_RXBUF)
                and isinstance(q, _queue.SplitQueue))
        while True:
            if self._partial is not None:
                if not self._rx_continue(q):
                    self.rx_room = False  # every posted buffer is taken: the guest's next one kicks us
                    break
                continue
            if not self.tap_readable:
                break
            if fast:
                stop, packets, nbytes, errors = _fast.rx(q, self.tap_fd, self._max_frame())
                self._count(packets, nbytes, errors, tx=False)
                if stop == _fast.STOP_EMPTY:
                    self.rx_room = False
                    break
                if stop == _fast.STOP_BLOCKED:
                    self.tap_readable = False
                    break
                # STOP_SLOW: this frame the Python way (too little room, or an odd chain)
            if self.rx_limiter is not None and self.rx_limiter.blocked():
                self.metrics.rx_throttled += 1
                wait = self.rx_limiter.wait_time(1)
                break
            chain = self._rx_chain(q)
            if chain is None:
                self.rx_room = False
                break
            self._rx_frame(q, chain)
        if q.needs_notification():
            act.signal_used(RX_QUEUE)
        return wait

    def _rx_frame(self, q, chain) -> None:
        """Read one frame straight into `chain`'s buffers; what does not fit lands in the
        bounce buffer and goes into further chains (MRG_RXBUF) by `_rx_continue`."""
        try:
            n = os.readv(self.tap_fd, chain.writable + [self._bounce])
        except OSError as e:
            if not isinstance(e, BlockingIOError):
                self.metrics.tap_errors += 1
            q.undo_pop()  # nothing was read: the chain stays first in line
            self.tap_readable = False
            return
        room = chain.writable_len
        if n <= room:
            self._rx_done(q, [chain], [n], n)
        elif not self.has_feature(F_MRG_RXBUF):
            self.metrics.rx_truncated += 1  # bigger than the guest's one buffer: dropped, as a NIC would
            q.undo_pop()
        else:
            self._partial = _Partial([chain], [room], n, self._bounce[:n - room])

    def _rx_continue(self, q) -> bool:
        """Spread the rest of a partly delivered frame over more chains; False while the
        guest has not posted enough (the frame waits, nothing more is read from the TAP)."""
        p = self._partial
        while p.done < len(p.rest):
            chain = self._rx_chain(q)
            if chain is None:
                return False
            k = chain.write(0, p.rest[p.done:p.done + chain.writable_len])
            p.chains.append(chain)
            p.lengths.append(k)
            p.done += k
        self._partial = None
        self._rx_done(q, p.chains, p.lengths, p.total)
        return True

    def _rx_chain(self, q):
        """The next usable rx chain (device-writable, room for the vnet header), or None.
        Unusable ones are handed back empty."""
        while (chain := self.pop_valid(q)) is not None:
            if chain.writable_len >= VNET_HDR_SIZE and not chain.readable:
                return chain
            self.metrics.rx_bad_buffers += 1
            q.add_used(chain.head, 0)
        return None

    def _rx_done(self, q, chains: list, lengths: list, n: int) -> None:
        """Return the chains a frame of `n` bytes filled, num_buffers in its header."""
        chains[0].write(NUM_BUFFERS_OFFSET, len(chains).to_bytes(2, "little"))
        for c, length in zip(chains, lengths):
            q.add_used(c.head, length)
        self.metrics.rx_packets += 1
        self.metrics.rx_bytes += max(0, n - VNET_HDR_SIZE)
        if self.rx_limiter is not None:
            self.rx_limiter.charge(max(0, n - VNET_HDR_SIZE))

    def _max_frame(self) -> int:
        """The largest frame the TAP may hand us with the offloads the guest took."""
        tso = self.has_feature(F_GUEST_TSO4) or self.has_feature(F_GUEST_TSO6)
        return MAX_FRAME if tso else MAX_PLAIN_FRAME

    # -- persist ---------------------------------------------------------------------
    def save(self) -> NetState:
        return NetState(self.tap_name, self.mac, self.avail_features, self.acked_features, self.config_generation,
                        self.rx_limiter.state() if self.rx_limiter else None,
                        self.tx_limiter.state() if self.tx_limiter else None)

    @classmethod
    def restore(cls, state: NetState, tap_fd: int | None = None) -> "NetDevice":
        """A device on TAP `tap_fd`, or the saved TAP name reopened."""
        fd = open_tap(state.tap_name) if tap_fd is None else tap_fd
        dev = cls(fd, state.mac, state.tap_name,
                  RateLimiter.from_state(state.rx_rate_limiter) if state.rx_rate_limiter else None,
                  RateLimiter.from_state(state.tx_rate_limiter) if state.tx_rate_limiter else None)
        dev.avail_features, dev.acked_features = state.avail_features, state.acked_features
        dev.config_generation = state.config_generation
        return dev


class _Partial:
    """A received frame whose head is in `chains` and whose rest (`rest`, a slice of the
    bounce buffer) is delivered up to `done` bytes."""

    __slots__ = ("chains", "lengths", "total", "rest", "done")

    def __init__(self, chains: list, lengths: list, total: int, rest) -> None:
        self.chains, self.lengths, self.total, self.rest, self.done = chains, lengths, total, rest, 0


def _unregister(poller, fd: int) -> None:
    try:
        poller.unregister(fd)
    except KeyError:
        pass

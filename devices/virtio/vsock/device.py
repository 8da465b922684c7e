"""The virtio-vsock device: config (guest CID), lifecycle, and its own poll thread.

The thread waits on the three queue eventfds (signalled by KVM's ioeventfds), a wake
eventfd, the host listener and every stream socket, and runs the `Muxer` after each
wake-up, so no vsock work happens on a vCPU thread or in the VMM's event loop.
"""
from __future__ import annotations

import os
import select
import struct
import threading
import time

from ..constants import DeviceType
from ..device import Activated, VirtioDevice, drain_eventfd
from ..errors import ChainError, QueueCorrupt
from . import EVENT_QUEUE, EVENT_TRANSPORT_RESET, HOST_CID, QUEUE_SIZE, RX_QUEUE, TX_QUEUE, VsockError
from .metrics import VsockMetrics
from .muxer import Muxer, open_listener
from .persist import VsockState

# Longest a header-only tx completion waits for an rx interrupt to ride on (seconds).
TX_IRQ_DELAY = 0.005
_LOOKUP = object()  # _timeout_ms(): look the connect deadline up (None means there is none)


class VsockDevice(VirtioDevice):
    """virtio-vsock with guest CID `guest_cid`, host side at Unix socket `uds_path`."""

    device_type = DeviceType.VSOCK
    queue_max_sizes = (QUEUE_SIZE, QUEUE_SIZE, QUEUE_SIZE)

    def __init__(self, guest_cid: int, uds_path: str) -> None:
        super().__init__()
        if not HOST_CID < guest_cid < 0xFFFFFFFF:
            raise VsockError(f"guest CID {guest_cid} is reserved or out of range",
                             hint="pick a CID of 3 or more (0-2 and 0xffffffff are reserved)")
        self.guest_cid, self.uds_path = guest_cid, str(uds_path)
        self.metrics = VsockMetrics()
        self.mux = Muxer(guest_cid, self.uds_path, open_listener(self.uds_path), self.metrics)
        self._thread: threading.Thread | None = None
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._stopping = False
        self._reset_event_pending = False
        self._irq_owed: float | None = None  # when a deferred tx interrupt is due

    def config_space(self) -> bytes:
        return struct.pack("<Q", self.guest_cid)

    # -- lifecycle -------------------------------------------------------------------
    def activate(self, act: Activated) -> None:
        self.active = act
        self._stopping = False
        self.mux.rx_room = True
        self.mux.tx_pending = True
        self._irq_owed = None
        self._thread = threading.Thread(target=self._run, args=(act,), name=f"virtio-vsock cid {self.guest_cid}",
                                        daemon=True)
        self._thread.start()

    def deactivated(self, act: Activated) -> None:
        thread, self._thread = self._thread, None
        self._stopping = True
        os.eventfd_write(self._wake, 1)
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        self.mux.close_streams()

    def close(self) -> None:
        self.reset()
        self.mux.listener.close()
        try:
            os.unlink(self.uds_path)
        except FileNotFoundError:
            pass
        if self._wake >= 0:
            os.close(self._wake)
            self._wake = -1

    def send_transport_reset(self) -> None:
        """Tell the guest every stream is gone (after a restore)."""
        self._reset_event_pending = True
        if self._wake >= 0:
            os.eventfd_write(self._wake, 1)

    # -- the device thread -----------------------------------------------------------
    def _run(self, act: Activated) -> None:
        poller = select.poll()
        fixed = {fd: i for i, fd in enumerate(act.queue_events)}
        for fd in (*fixed, self._wake):
            poller.register(fd, select.POLLIN)
        registered: dict[int, int] = {}
        while not self._stopping:
            registered = self._update_poll(poller, registered)
            deadline = self.mux.next_deadline()
            idle = deadline is None and self._irq_owed is None  # the usual turn: no timeout to work out
            self._dispatch(poller.poll(None if idle else self._timeout_ms(deadline)), fixed, registered)
            if self._stopping:
                return
            try:
                if not self._turn(act, deadline):
                    continue
                # After a host peer's close, what came while the turn ran rides on its
                # interrupt: one more look without sleeping and one more turn at most. The
                # usual case is a client's connect right after it closed its previous
                # stream: the close's SHUTDOWN and the connect's REQUEST then reach the
                # guest together and its RST and RESPONSE come back in one kick, where each
                # would otherwise cost a hand-off between the guest and this thread (on
                # one lab CPU, the guest runs its interrupt before this thread runs again).
                # Other turns skip the look: there it is a poll() that mostly finds nothing.
                more = None
                if self.mux.host_closed:
                    registered = self._update_poll(poller, registered)
                    more = poller.poll(0)
                if more:
                    self._dispatch(more, fixed, registered)
                    if self._stopping:
                        return
                    self._turn(act, deadline)
                    self._irq_owed = None  # whatever that turn deferred goes with this interrupt
                # At once, before the poll set is rebuilt: the guest's handler reads and
                # acks the interrupt status in C on the vCPU thread (devices/virtio/_mmio.pyx),
                # so it no longer waits for this thread to let go of the GIL.
                act.signal_used(RX_QUEUE)
            except QueueCorrupt as e:
                act.fail(e)
                return

    def _dispatch(self, ready: list[tuple[int, int]], fixed: dict[int, int], registered: dict[int, int]) -> None:
        """Hand what poll reported to the muxer: queue kicks set its flags, sockets go to on_ready()."""
        for fd, events in ready:
            if fd == self._wake or fd in fixed:
                drain_eventfd(fd)
                if fixed.get(fd) == RX_QUEUE:
                    self.mux.rx_room = True
                elif fixed.get(fd) == TX_QUEUE:
                    self.mux.tx_pending = True
            elif fd in registered:
                self.mux.on_ready(fd, events)

    def _turn(self, act: Activated, deadline: float | None) -> bool:
        """One round of work after a wake-up; True to raise one interrupt for all of it:
        virtio-mmio has one interrupt line and the driver's handler looks at every queue,
        and each interrupt costs the guest two register exits. Completed tx packets that
        were only headers (RESPONSE, RST, CREDIT_UPDATE...) hold nothing the guest waits
        for: their interrupt rides on the next rx one, or comes TX_IRQ_DELAY later."""
        if deadline is not None and deadline <= time.monotonic():
            self.mux.expire(time.monotonic())
        self.mux.host_closed = False
        notify = False
        if self._reset_event_pending:
            notify = self._send_reset_event(act)
        tx = self.mux.process_tx(act) if self.mux.tx_pending else False
        if self.mux.fresh:
            self.mux.retry_fresh()
        notify |= self.mux.process_rx(act)
        if tx and not notify and not self.mux.tx_data:
            if self._irq_owed is None:
                self._irq_owed = time.monotonic() + TX_IRQ_DELAY
            return False
        if notify or tx or (self._irq_owed is not None and time.monotonic() >= self._irq_owed):
            self._irq_owed = None
            return True
        return False

    def _timeout_ms(self, deadline: float | None | object = _LOOKUP) -> int | None:
        """Poll timeout: the next connect deadline (`deadline`, or looked up) or a
        deferred interrupt, if any."""
        if deadline is _LOOKUP:
            deadline = self.mux.next_deadline()
        owed = self._irq_owed
        if deadline is None:
            if owed is None:
                return None
            due = owed
        else:
            due = deadline if owed is None or deadline < owed else owed
        return max(0, int((due - time.monotonic()) * 1000) + 1)

    def _update_poll(self, poller, registered: dict[int, int]) -> dict[int, int]:
        want = self.mux.interest()
        if want == registered:
            return registered  # the usual turn: nothing to tell poll (one C comparison)
        for fd in registered.keys() - want.keys():
            poller.unregister(fd)
        for fd, mask in want.items():
            if registered.get(fd) != mask:
                poller.register(fd, mask)
        return want

    def _send_reset_event(self, act: Activated) -> bool:
        """True if the driver wants an interrupt for it."""
        q = act.queues[EVENT_QUEUE]
        if q is None:
            return False
        try:
            chain = q.pop()
        except ChainError as e:
            if e.head < q.size:
                q.add_used(e.head, 0)
            return q.needs_notification()
        if chain is None:
            return False  # retried when the guest adds an event buffer
        self._reset_event_pending = False
        q.add_used(chain.head, chain.write(0, struct.pack("<I", EVENT_TRANSPORT_RESET)))
        return q.needs_notification()

    # -- persist ---------------------------------------------------------------------
    def save(self) -> VsockState:
        return VsockState(self.guest_cid, self.uds_path, self.avail_features, self.acked_features,
                          self.config_generation)

    @classmethod
    def restore(cls, state: VsockState) -> "VsockDevice":
        """A device on the same CID and socket; call send_transport_reset() once activated."""
        dev = cls(state.guest_cid, state.uds_path)
        dev.avail_features, dev.acked_features = state.avail_features, state.acked_features
        dev.config_generation = state.config_generation
        return dev

"""The virtio-vsock device: config (guest CID), lifecycle, and its own thread.

The thread runs `device_loop.DeviceLoop` (compiled): it waits on the queue eventfds, a
wake eventfd, the host listener and every stream socket, and runs the `Muxer` after
each wake-up, so no vsock work happens on a vCPU thread or in the VMM's event loop.
"""
from __future__ import annotations

import os
import struct
import threading

from ..constants import DeviceType
from ..device import Activated, VirtioDevice
from ..errors import ChainError
from . import EVENT_QUEUE, EVENT_TRANSPORT_RESET, HOST_CID, QUEUE_SIZE, VsockError
from .device_loop import DeviceLoop
from .metrics import VsockMetrics
from .listener import open_listener
from .muxer import Muxer
from .persist import VsockState


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
        self._loop: DeviceLoop | None = None
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._reset_event_pending = False

    def config_space(self) -> bytes:
        return struct.pack("<Q", self.guest_cid)

    # -- lifecycle -------------------------------------------------------------------
    def activate(self, act: Activated) -> None:
        self.active = act
        self.mux.rx_room = True
        self.mux.tx_pending = True
        self._loop = DeviceLoop(self, act)
        self._thread = threading.Thread(target=self._loop.run, name=f"virtio-vsock cid {self.guest_cid}",
                                        daemon=True)
        self._thread.start()

    def deactivated(self, act: Activated) -> None:
        thread, self._thread = self._thread, None
        if self._loop is not None:
            self._loop.stop()
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

    # -- on the device thread (DeviceLoop.turn) --------------------------------------
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

"""Saved state of a virtio-vsock device. Streams are not saved: like Firecracker, a
restored device sends TRANSPORT_RESET on the event queue and the guest drops them."""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class VsockState:
    guest_cid: int
    uds_path: str
    avail_features: int
    acked_features: int
    config_generation: int

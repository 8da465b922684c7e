"""One saved virtio device (transport registers + device state), and restoring it.

`save(transport)` gives a `VirtioDeviceState` of frozen dataclasses (`dataclasses.asdict`
makes it JSON-ready, `from_data` reads it back); `restore(state, ...)`
rebuilds device and transport and re-activates the device if the driver had it
running. The device kind is looked up in `KINDS`; backends that cannot be reopened by
path (a TAP fd) are passed as keyword arguments to the device's `restore`.
"""
from __future__ import annotations

import dataclasses

from .balloon.device import BalloonDevice
from .block.device import BlockDevice
from .errors import DeviceError
from .mmio import MmioTransport
from .net.device import NetDevice
from .balloon.persist import BalloonState
from .block.persist import BlockState
from .net.persist import NetState
from .persist import TransportState, from_dict
from .rng.persist import RngState
from .vsock.persist import VsockState
from .rng.device import RngDevice
from .vsock.device import VsockDevice

KINDS = {"block": BlockDevice, "net": NetDevice, "vsock": VsockDevice, "rng": RngDevice, "balloon": BalloonDevice}
STATES = {"block": BlockState, "net": NetState, "vsock": VsockState, "rng": RngState, "balloon": BalloonState}


@dataclasses.dataclass(frozen=True)
class VirtioDeviceState:
    kind: str
    transport: TransportState
    device: object  # the device's own frozen state dataclass


def from_data(data: dict) -> VirtioDeviceState:
    """The state back from `dataclasses.asdict(state)` (e.g. after a JSON round trip)."""
    kind = data.get("kind")
    if kind not in STATES:
        raise DeviceError(f"snapshot holds an unknown virtio device kind {kind!r}",
                          hint="the snapshot was written by a newer mm")
    return VirtioDeviceState(kind, from_dict(TransportState, data["transport"]), from_dict(STATES[kind], data["device"]))


def save(transport: MmioTransport) -> VirtioDeviceState:
    for kind, cls in KINDS.items():
        if type(transport.device) is cls:
            return VirtioDeviceState(kind, transport.save(), transport.device.save())
    raise DeviceError(f"no snapshot support for {type(transport.device).__name__}")


def restore(state: VirtioDeviceState, memory, interrupt, events, **backend) -> MmioTransport:
    """A transport with its device as saved; vsock also announces a transport reset."""
    cls = KINDS.get(state.kind)
    if cls is None:
        raise DeviceError(f"snapshot holds an unknown virtio device kind {state.kind!r}",
                          hint="the snapshot was written by a newer mm")
    device = cls.restore(state.device, **backend)
    transport = MmioTransport(device, memory, interrupt, events)
    transport.restore(state.transport)
    if isinstance(device, VsockDevice) and device.active is not None:
        device.send_transport_reset()
    return transport

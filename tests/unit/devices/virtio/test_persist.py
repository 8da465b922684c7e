"""Every device state survives asdict → JSON → from_dict unchanged (the snapshot path)."""
from __future__ import annotations

import dataclasses
import json

from devices.ratelimiter import BucketConfig, RateLimiter
from devices.virtio import snapshot
from devices.virtio.balloon.device import BalloonDevice
from devices.virtio.block.device import BlockDevice
from devices.virtio.mmio import MmioTransport
from devices.virtio.persist import from_dict
from devices.virtio.rng.device import RngDevice
from devices.virtio.testing import MockDriver
from devices.virtio.vsock.device import VsockDevice


def roundtrip(state):
    data = json.loads(json.dumps(dataclasses.asdict(state)))
    return from_dict(type(state), data)


def test_device_states_roundtrip_json(tmp_path, memory, interrupt, loop):
    img = tmp_path / "d.img"
    img.write_bytes(bytes(4096))
    limiter = RateLimiter(bandwidth=BucketConfig(1000, 100, 7), ops=BucketConfig(10, 100))
    devices = [BlockDevice(img, rate_limiter=limiter), RngDevice(), BalloonDevice(64),
               VsockDevice(5, str(tmp_path / "v.sock"))]
    for dev in devices:
        state = dev.save()
        assert roundtrip(state) == state
        dev.close()


def test_whole_virtio_state_roundtrip_json(memory, interrupt, loop):
    t = MmioTransport(BalloonDevice(8), memory, interrupt, loop)
    MockDriver(t, memory, queue_size=8)
    state = snapshot.save(t)
    data = json.loads(json.dumps(dataclasses.asdict(state)))
    assert snapshot.from_data(data) == state
    t.close()

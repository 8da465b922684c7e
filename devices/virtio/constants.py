"""virtio constants shared by the transport, queues and devices (virtio 1.2 spec,
/usr/include/linux/virtio_{mmio,config,ring,ids}.h)."""
from __future__ import annotations

import enum

MMIO_MAGIC = 0x74726976  # "virt"
MMIO_VERSION = 2
VENDOR_ID = 0x554D4D6D  # "mMMU": ours, like QEMU's "QEMU"
MMIO_REGION_SIZE = 0x1000
MAX_QUEUE_SIZE = 32768


class Reg(enum.IntEnum):
    """virtio-mmio version 2 register offsets."""

    MAGIC = 0x000
    VERSION = 0x004
    DEVICE_ID = 0x008
    VENDOR_ID = 0x00C
    DEVICE_FEATURES = 0x010
    DEVICE_FEATURES_SEL = 0x014
    DRIVER_FEATURES = 0x020
    DRIVER_FEATURES_SEL = 0x024
    QUEUE_SEL = 0x030
    QUEUE_NUM_MAX = 0x034
    QUEUE_NUM = 0x038
    QUEUE_READY = 0x044
    QUEUE_NOTIFY = 0x050
    INTERRUPT_STATUS = 0x060
    INTERRUPT_ACK = 0x064
    STATUS = 0x070
    QUEUE_DESC_LOW = 0x080
    QUEUE_DESC_HIGH = 0x084
    QUEUE_DRIVER_LOW = 0x090
    QUEUE_DRIVER_HIGH = 0x094
    QUEUE_DEVICE_LOW = 0x0A0
    QUEUE_DEVICE_HIGH = 0x0A4
    SHM_SEL = 0x0AC
    SHM_LEN_LOW = 0x0B0
    SHM_LEN_HIGH = 0x0B4
    SHM_BASE_LOW = 0x0B8
    SHM_BASE_HIGH = 0x0BC
    CONFIG_GENERATION = 0x0FC
    CONFIG = 0x100


class Status(enum.IntFlag):
    """Device status bits (virtio 1.2 §2.1)."""

    RESET = 0
    ACKNOWLEDGE = 1
    DRIVER = 2
    DRIVER_OK = 4
    FEATURES_OK = 8
    DEVICE_NEEDS_RESET = 0x40
    FAILED = 0x80


class DeviceType(enum.IntEnum):
    """virtio device ids (virtio_ids.h)."""

    NET = 1
    BLOCK = 2
    RNG = 4
    BALLOON = 5
    VSOCK = 19


# Interrupt status bits.
INT_VRING = 1
INT_CONFIG = 2

# Feature bits common to every device.
F_INDIRECT_DESC = 28
F_EVENT_IDX = 29
F_VERSION_1 = 32
F_ACCESS_PLATFORM = 33
F_RING_PACKED = 34


def bit(n: int) -> int:
    """The feature mask of feature bit `n`."""
    return 1 << n

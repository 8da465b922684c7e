"""virtio-blk: raw disk images behind a virtio-mmio transport (device id 2).

Constants from /usr/include/linux/virtio_blk.h and the device's error type; the device
is in `device.py`, request parsing and I/O in `request.py`, snapshots in `persist.py`,
counters in `metrics.py`.
"""
from __future__ import annotations

from ..errors import BackendError

SECTOR_SIZE = 512
ID_BYTES = 20
QUEUE_SIZE = 256

F_SIZE_MAX = 1
F_SEG_MAX = 2
F_RO = 5
F_BLK_SIZE = 6
F_FLUSH = 9
F_DISCARD = 13
F_WRITE_ZEROES = 14

T_IN = 0
T_OUT = 1
T_FLUSH = 4
T_GET_ID = 8
T_DISCARD = 11
T_WRITE_ZEROES = 13

S_OK = 0
S_IOERR = 1
S_UNSUPP = 2

WRITE_ZEROES_FLAG_UNMAP = 1


class BlockError(BackendError):
    """A disk image cannot be opened or used."""

    hint = "check the --disk path, its permissions, and that it is a raw image"

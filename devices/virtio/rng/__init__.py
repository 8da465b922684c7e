"""virtio-rng (device id 4): the guest's /dev/hwrng fed from the host's getrandom(2).

One request queue; each chain's writable buffers are filled (at most `MAX_REQUEST`
bytes per request, the spec lets the device return fewer) and returned.
"""
from __future__ import annotations

from ..errors import BackendError

QUEUE_SIZE = 256
MAX_REQUEST = 64 * 1024


class RngError(BackendError):
    """The host's entropy source failed."""

    hint = "the host's getrandom(2) failed; check the kernel's entropy source"

"""The virtqueue the devices use: the compiled `_queue.SplitQueue`.

Set MM_PURE_QUEUE=1 to run on the pure-Python twin (`queue_py`) instead, e.g. to debug.
A missing compiled module is an error with a hint, not a silent slowdown.
"""
from __future__ import annotations

import os

from .errors import DeviceError

if os.environ.get("MM_PURE_QUEUE") == "1":
    from .queue_py import SplitQueue
else:
    try:
        from ._queue import SplitQueue
    except ImportError as e:  # pragma: no cover - depends on the build
        raise DeviceError(
            f"the compiled virtqueue (devices/virtio/_queue) is not built: {e}",
            hint="run `.venv/bin/python setup.py -q build_ext --inplace` (or set MM_PURE_QUEUE=1)",
        ) from None

__all__ = ["SplitQueue"]

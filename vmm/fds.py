"""Closing every fd of a process but a few: what a freshly forked worker, spare or VMM
does first, so nothing of its parent's stays open in it."""
from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing is kept off the worker's start path (tests/unit/worker/test_start_imports.py)
    from typing import Iterable

FD_LIMIT = 1 << 20  # above any fd number this process can hold (fs.nr_open's default)


def close_all_but(keep: Iterable[int] = (), low: int = 3) -> None:
    """Close every fd from `low` up, except those in `keep`."""
    start = low
    for fd in sorted(k for k in set(keep) if k >= low):
        os.closerange(start, fd)
        start = fd + 1
    os.closerange(start, FD_LIMIT)

"""Is a worker still alive? A pid alone is not enough: pids are reused.

We record the worker's pid together with its start time (field 22 of /proc/PID/stat,
clock ticks since boot) and call it alive only when both still match.
"""
from __future__ import annotations

import os


def process_start_time(pid: int) -> int | None:
    """Start time of `pid` in clock ticks since boot, or None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # comm (field 2) may contain spaces and parentheses; fields resume after the last ')'.
    rest = data[data.rindex(b")") + 2 :].split()
    state = rest[0]
    if state in (b"Z", b"X"):
        return None  # a zombie has finished: its worker is gone
    return int(rest[19])


def is_alive(pid: int | None, start_time: int | None) -> bool:
    if not pid or start_time is None:
        return False
    return process_start_time(pid) == start_time


def self_identity() -> tuple[int, int]:
    """(pid, start time) of the calling process, as recorded for a worker."""
    pid = os.getpid()
    start = process_start_time(pid)
    assert start is not None  # we are running
    return pid, start

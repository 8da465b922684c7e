"""Is a worker still alive? A pid alone is not enough: pids are reused.

We record the worker's pid together with its start time (field 22 of /proc/PID/stat,
clock ticks since boot) and call it alive only when both still match. `wait_gone` waits
for such a process to end on a pidfd (woken at its exit, not by polling /proc).
"""
from __future__ import annotations

import os
import time


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


def wait_gone(pid: int | None, start_time: int | None, timeout: float) -> bool:
    """Block until process (`pid`, `start_time`) has ended, at most `timeout` seconds;
    True if it has."""
    import select

    if not is_alive(pid, start_time):
        return True
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    except OSError:  # no pidfds here (Linux < 5.3): look every 20 ms
        deadline = time.monotonic() + timeout
        while is_alive(pid, start_time) and time.monotonic() < deadline:
            time.sleep(0.02)
        return not is_alive(pid, start_time)
    try:
        if process_start_time(pid) != start_time:
            return True  # the fd is of a process that took the pid since (or a zombie)
        poller = select.poll()
        poller.register(fd, select.POLLIN)  # readable once the process has exited
        poller.poll(max(0, int(timeout * 1000)))
    finally:
        os.close(fd)
    return not is_alive(pid, start_time)


def self_identity() -> tuple[int, int]:
    """(pid, start time) of the calling process, as recorded for a worker."""
    pid = os.getpid()
    start = process_start_time(pid)
    assert start is not None  # we are running
    return pid, start

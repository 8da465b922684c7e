"""Opt-in phase timestamps of a start (`MM_TIMELINE=FILE`): where `mm run`'s time goes.

Off (the default) `mark()` is one environment lookup. On, every process of
a run (the CLI, the worker's supervisor and VMM, their threads) appends lines
`<CLOCK_MONOTONIC ns> <pid> <phase>` to FILE, one write() each with O_APPEND, so
processes never interleave within a line. A jailed VMM cannot open FILE from inside its
jail: it opens it before (`open_early()`) and keeps the fd, and where even that fails
the line goes to stderr (its worker.log), in the same format after `timeline `.
`benchmarks/cli/timeline_run.py` turns the lines into a table.
"""
from __future__ import annotations

import os
import time

_fd: int | None = None  # -1: FILE could not be opened (stderr instead)
_fd_key: tuple[int, str] | None = None  # (pid, path) _fd was opened for: a forked child (the VMM) opens its own


def _path() -> str | None:
    # Looked up at each call, not at import: the fork server imports this module long
    # before a worker it forks inherits a run's environment.
    return os.environ.get("MM_TIMELINE") or None


def open_early(path: str | None = None) -> None:
    """Open FILE (`path`, default MM_TIMELINE) now, before a jail hides it; a no-op when
    off or open already in this process."""
    global _fd, _fd_key
    path = path or _path()
    key = (os.getpid(), path)
    if path is None or _fd_key == key:
        return
    if _fd is not None and _fd >= 0 and _fd_key is not None and _fd_key[0] == key[0]:
        os.close(_fd)  # another file in this process; a forked child's number may be another fd's now
    _fd_key = key
    try:
        _fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError:
        _fd = -1  # stderr from now on


def mark(phase: str) -> None:
    """Record that `phase` happened now (when MM_TIMELINE is set)."""
    path = _path()
    if path is None:
        return
    line = f"{time.clock_gettime_ns(time.CLOCK_MONOTONIC)} {os.getpid()} {phase}\n".encode()
    open_early(path)
    try:
        if _fd is not None and _fd >= 0:
            os.write(_fd, line)
            return
    except OSError:
        pass
    try:
        os.write(2, b"timeline " + line)
    except OSError:
        pass

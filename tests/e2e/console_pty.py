"""Drives `mm console MACHINE` on a pseudo-terminal as a user at a terminal would, and
prints what happened as one JSON object (tests/e2e/test_lifecycle.py runs it on the
guest host):

    python -m tests.e2e.console_pty MM MACHINE NEEDLE

It waits for NEEDLE in the console output (the guest writes it there), types Ctrl-],
and reports whether `mm console` then exits by itself, with which status, and whether
the terminal was put back into its original (cooked) mode.
"""
from __future__ import annotations

import json
import os
import pty
import select
import sys
import termios
import time

STEP_TIMEOUT = 180.0  # the lab under load answers slowly; nothing here is a timing check


def _read_until(fd: int, needle: bytes, seen: bytearray, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while needle not in seen:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # EIO: the child closed the terminal
                return needle in seen
            if not chunk:
                return needle in seen
            seen += chunk
    return True


def _canonical(fd: int) -> bool:
    """Is the terminal in cooked mode (line editing and echo, as a shell leaves it)?"""
    lflag = termios.tcgetattr(fd)[3]
    return bool(lflag & termios.ICANON and lflag & termios.ECHO)


def _wait(pid: int, timeout: float) -> int | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.1)
    return None


def main(argv: list[str]) -> int:
    mm, machine, needle = argv
    pid, fd = pty.fork()
    if pid == 0:
        os.execv(mm, [mm, "console", machine])
    seen = bytearray()
    attached = _read_until(fd, b"Ctrl-] detaches", seen, STEP_TIMEOUT)
    saw_needle = attached and _read_until(fd, needle.encode(), seen, STEP_TIMEOUT)
    raw_while_attached = not _canonical(fd)
    os.write(fd, b"\x1d")
    status = _wait(pid, STEP_TIMEOUT)
    restored = status is not None and _canonical(fd)
    if status is None:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    print(json.dumps({"attached": attached, "saw_needle": saw_needle, "raw_while_attached": raw_while_attached,
                      "status": status, "restored": restored, "tail": seen[-2000:].decode(errors="replace")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

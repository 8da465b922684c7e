"""vmm.fds.close_all_but, in a forked child (this process keeps its own fds)."""
from __future__ import annotations

import json
import os

from vmm.fds import close_all_but


def in_child(pick) -> dict:
    """Open seven fds in a child (the last one dup'ed to 200), close all but pick(opened)
    and the report pipe; what it kept and what it still has open."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            opened = [os.open(os.devnull, os.O_RDONLY) for _ in range(6)]
            opened.append(os.dup2(opened[0], 200))
            kept = pick(opened)
            close_all_but([*kept, w])
            names = os.listdir("/proc/self/fd")  # its own fd is closed again once it returns
            left = [fd for fd in map(int, names) if fd >= 3 and fd != w and os.path.exists(f"/proc/self/fd/{fd}")]
            os.write(w, json.dumps({"kept": sorted(kept), "left": sorted(left)}).encode())
        finally:
            os._exit(0)
    os.close(w)
    out = os.read(r, 4096)
    os.close(r)
    os.waitpid(pid, 0)
    return json.loads(out)


def test_only_the_kept_fds_stay():
    got = in_child(lambda opened: [opened[2], opened[6]])  # one low, one high (200)
    assert got["left"] == got["kept"] and 200 in got["kept"]


def test_nothing_kept_closes_everything_from_low():
    assert in_child(lambda opened: [])["left"] == []

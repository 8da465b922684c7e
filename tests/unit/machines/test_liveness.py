"""vmm.machines.liveness.wait_gone: woken by the process's exit, bounded by its timeout,
and never fooled by a pid that names another process."""
from __future__ import annotations

import subprocess
import sys
import time

from vmm.machines import liveness


def test_returns_when_the_process_exits():
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.3)"])
    start = liveness.process_start_time(p.pid)
    t0 = time.monotonic()
    assert liveness.wait_gone(p.pid, start, timeout=10)
    assert time.monotonic() - t0 < 5
    p.wait()


def test_gives_up_after_the_timeout():
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        t0 = time.monotonic()
        assert not liveness.wait_gone(p.pid, liveness.process_start_time(p.pid), timeout=0.2)
        assert 0.15 < time.monotonic() - t0 < 5
    finally:
        p.kill()
        p.wait()


def test_a_pid_with_another_start_time_is_gone_at_once():
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        t0 = time.monotonic()
        assert liveness.wait_gone(p.pid, liveness.process_start_time(p.pid) - 1, timeout=10)
        assert time.monotonic() - t0 < 1
    finally:
        p.kill()
        p.wait()


def test_no_process_is_gone():
    assert liveness.wait_gone(None, None, timeout=10)
    assert liveness.wait_gone(2 ** 22 + 12345, 1, timeout=10)

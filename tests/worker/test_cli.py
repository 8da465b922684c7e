"""`mm` as a user types it, against real workers running the real tiny guest."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

from vmm.machines.liveness import is_alive

from .conftest import wait_for


def mm(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "vmm", *args], capture_output=True, text=True, timeout=120)
    if check:
        assert proc.returncode == 0, (args, proc.stdout, proc.stderr)
    return proc


def test_user_session(control, spawn):
    rec = spawn("web", exit_code=7)
    assert "web" in mm("ps").stdout and "Up" in mm("ps").stdout
    assert mm("pause", "web").stdout == "web\n"
    info = json.loads(mm("inspect", "web", "--json").stdout)
    assert (info["state"], info["pid"], info["id"]) == ("paused", rec.worker_pid, rec.id)
    assert "(Paused)" in mm("ps").stdout
    mm("unpause", "web")
    wait_for(lambda: "hello from the tiny guest" in mm("logs", "web").stdout, what="greeting in mm logs")
    stats = json.loads(mm("stats", "--json", "web").stdout)
    assert stats["web"]["state"] == "running"
    assert mm("stop", "-t", "10", "web").stdout == "web\n"
    ps = mm("ps", "-a").stdout
    assert "Exited (7)" in ps
    assert mm("wait", "web").stdout == "7\n"
    assert json.loads(mm("ps", "-a", "--format", "json").stdout)[0]["exit_code"] == 7
    assert mm("logs", "--tail", "1", "web").stdout == "bye\n"
    mm("restart", "web")
    assert json.loads(mm("inspect", "web").stdout)["state"] == "running"
    mm("rm", "-f", "web")
    assert mm("ps", "-a").stdout.count("\n") == 1  # the header only
    assert not control.paths(rec).root.exists()


def test_ps_tells_the_truth_after_kill_9(control, spawn):
    rec = spawn("victim")
    os.kill(rec.worker_pid, signal.SIGKILL)
    wait_for(lambda: not is_alive(rec.worker_pid, rec.worker_start), what="the worker to die")
    assert "victim" not in mm("ps").stdout
    assert "Dead (worker gone)" in mm("ps", "-a").stdout
    info = json.loads(mm("inspect", "victim").stdout)
    assert info["state"] == "dead" and info["pid"] is None
    mm("system", "prune", "-f")
    assert not control.paths(rec).root.exists()
    assert control.machines.list() == []


def test_errors_change_nothing(control, spawn):
    spawn("one")
    proc = mm("unpause", "one", check=False)
    assert proc.returncode == 1 and "error: machine one is running" in proc.stderr and "Traceback" not in proc.stderr
    proc = mm("rm", "one", check=False)
    assert proc.returncode == 1 and "hint:" in proc.stderr and "-f" in proc.stderr
    proc = mm("kill", "-s", "USR1", "one", check=False)
    assert proc.returncode == 2 and "unsupported signal" in proc.stderr
    assert json.loads(mm("inspect", "one").stdout)["state"] == "running"
    assert mm("kill", "one").stdout == "one\n"
    assert mm("wait", "one").stdout == "137\n"


def test_logs_follow_ends_with_the_vm(control, spawn):
    spawn("follow", exit_code=0)
    proc = subprocess.Popen([sys.executable, "-m", "vmm", "logs", "-f", "follow"], stdout=subprocess.PIPE)
    wait_for(lambda: "hello" in mm("logs", "follow").stdout, what="the greeting")
    mm("stop", "follow")
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert out == b"hello from the tiny guest\nbye\n"


def test_console_typing_reaches_the_guest_and_ctrl_bracket_detaches(control, spawn):
    spawn("tty")
    proc = subprocess.Popen([sys.executable, "-m", "vmm", "console", "tty"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdin.write(b"echo me\n")
    proc.stdin.flush()
    # The guest's echo, read where the user sees it (our stdout), before detaching: the
    # console log has it a moment before the stream does, and bytes still in flight at
    # Ctrl-] are not shown (as with `docker attach`).
    seen = _read_until(proc.stdout, b"echo me\n", timeout=20)
    proc.stdin.write(b"\x1d")
    proc.stdin.flush()
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and b"echo me\n" in seen + out and b"Ctrl-]" in err
    assert control.find("tty").state.value == "running"  # detaching leaves the VM running


def _read_until(stream, want: bytes, timeout: float) -> bytes:
    """What `stream` (a pipe) gives until `want` is among it; AssertionError after `timeout` s."""
    import select
    import time

    got, deadline = b"", time.monotonic() + timeout
    while want not in got:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([stream], [], [], left)[0]:
            raise AssertionError(f"no {want!r} on the console within {timeout} s; got {got!r}")
        chunk = os.read(stream.fileno(), 4096)
        if not chunk:
            raise AssertionError(f"the console ended before {want!r}; got {got!r}")
        got += chunk
    return got

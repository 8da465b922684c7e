"""vmm.cli.main.leave: the exit status and everything written survive skipping the
interpreter's teardown, and exit handlers and threads still get theirs when they exist."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def run(body: str) -> subprocess.CompletedProcess:
    code = f"import sys\nsys.path.insert(0, {str(REPO)!r})\nfrom vmm.cli.main import leave\n{body}"
    return subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, timeout=60)


def test_status_and_buffered_output_survive():
    r = run("print('to stdout', end='')\nprint('to stderr', file=sys.stderr, end='')\nleave(3)")
    assert (r.returncode, r.stdout, r.stderr) == (3, "to stdout", "to stderr")


def test_exit_handlers_still_run():
    r = run("import atexit\natexit.register(lambda: print('handler ran'))\nleave(0)")
    assert (r.returncode, r.stdout) == (0, "handler ran\n")


def test_a_running_thread_is_still_waited_for():
    r = run("import threading, time\n"
            "threading.Thread(target=lambda: (time.sleep(0.2), print('thread done'))).start()\n"
            "leave(5)")
    assert (r.returncode, r.stdout) == (5, "thread done\n")


def test_a_large_buffered_output_is_all_written():
    r = run("print('x' * 100000)\nleave(0)")
    assert r.returncode == 0 and len(r.stdout) == 100001


def test_a_closed_stdout_is_reported_as_python_does():
    """Nobody reads the pipe any more: leave() ends the way sys.exit() does there."""
    def ending(call: str) -> tuple[int, bool]:
        code = (f"import sys, time\nsys.path.insert(0, {str(REPO)!r})\nfrom vmm.cli.main import leave\n"
                f"time.sleep(0.3)\nprint('x' * 100)\n{call}")
        p = subprocess.Popen([sys.executable, "-S", "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        p.stdout.close()
        _, err = p.communicate(timeout=60)
        return p.returncode, b"BrokenPipeError" in err

    assert ending("leave(0)") == ending("sys.exit(0)")
    assert ending("leave(0)")[1]

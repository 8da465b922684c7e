"""The VMM's own move into its v1 cgroups (vmm.jail.supervisor.join_cgroup)."""
from __future__ import annotations

import os
import threading

import pytest

from vmm.jail.errors import JailError
from vmm.jail.supervisor import join_cgroup


def test_nothing_to_join_on_v2():
    join_cgroup([])  # the supervisor attached the VMM itself


def test_a_second_thread_is_refused_before_anything_moves(tmp_path):
    """Writing "0" to `tasks` moves the writing thread only: with another thread running,
    that one would stay outside the limits, so the VMM refuses to start."""
    tasks = tmp_path / "tasks"
    stop = threading.Event()
    t = threading.Thread(target=stop.wait)
    t.start()
    try:
        with pytest.raises(JailError, match=r"\d+ threads run before the VMM joins its cgroup"):
            join_cgroup([str(tasks)])
    finally:
        stop.set()
        t.join()
    assert not tasks.exists()


def in_a_single_threaded_child(fn) -> str:
    """fn() in a forked child, whose only thread is the one that forked (the test process
    may hold other tests' threads, which join_cgroup would rightly refuse); returns the
    child's JailError message, or "" when it raised nothing."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            fn()
            msg = b""
        except JailError as exc:
            msg = exc.message.encode()
        except BaseException as exc:  # noqa: BLE001 - reported to the parent as text
            msg = f"unexpected {type(exc).__name__}: {exc}".encode()
        os.write(w, msg)
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        out = f.read().decode()
    os.waitpid(pid, 0)
    return out


def test_an_unwritable_cgroup_is_a_clear_error(tmp_path):
    message = in_a_single_threaded_child(lambda: join_cgroup([str(tmp_path / "missing" / "tasks")]))
    assert "cannot join cgroup" in message, message

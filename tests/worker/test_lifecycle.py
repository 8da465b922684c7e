"""A real worker running a real tiny guest, driven through the control API and `mm`."""
from __future__ import annotations

import os
import signal
import threading

import pytest

from vmm.api.errors import Unavailable, WorkerUnreachable, WrongState
from vmm.machines import InvalidTransition, State
from vmm.machines.db import open_control
from vmm.machines.liveness import is_alive

from .conftest import read, wait_for

GREETING = b"hello from the tiny guest\n"


def test_start_pause_resume_stop(control, spawn):
    rec = spawn("t1", exit_code=7)
    assert rec.state is State.RUNNING and is_alive(rec.worker_pid, rec.worker_start)
    assert [r.name for r in control.machines.reconcile_all(include_stopped=False)] == ["t1"]
    paths = control.paths(rec)
    wait_for(lambda: GREETING in read(paths.console_log), what="the guest's greeting")
    status = control.client(rec).status()
    assert status["state"] == "running" and status["pid"] == rec.worker_pid

    assert control.pause("t1").state is State.PAUSED
    assert control.client(rec).status()["state"] == "paused"
    with pytest.raises(InvalidTransition):
        control.pause("t1")
    assert control.unpause("t1").state is State.RUNNING

    rec = control.stop("t1", timeout=20)
    assert (rec.state, rec.exit_code, rec.exit_reason) == (State.EXITED, 7, "poweroff")
    assert b"bye\n" in read(paths.console_log)  # the guest itself heard the request
    assert not is_alive(rec.worker_pid, rec.worker_start)
    assert not paths.api_socket.exists()


def test_guest_exit_code_and_wait(control, spawn):
    rec = spawn("t2", exit_code=3, exit_at_once=True)
    assert control.wait(rec.id) == 3
    rec = control.find("t2")
    assert rec.state is State.EXITED and rec.exit_reason == "poweroff"


def test_stop_forces_a_guest_that_ignores_it(control, spawn):
    spawn("stubborn", ignore_shutdown=True)
    rec = control.stop("stubborn", timeout=0.5)
    assert (rec.state, rec.exit_code, rec.exit_reason) == (State.EXITED, 137, "killed")


def test_kill_and_start_again(control, spawn):
    rec = spawn("again")
    wait_for(lambda: GREETING in read(control.paths(rec).console_log), what="the first greeting")
    control.kill("again")
    assert control.wait("again") == 137
    rec2 = control.start("again")
    assert rec2.state is State.RUNNING and rec2.generation == rec.generation + 1
    assert rec2.worker_pid != rec.worker_pid
    wait_for(lambda: read(control.paths(rec2).console_log).count(GREETING) == 2, what="a second greeting")


def test_sigkill_of_worker_leaves_store_consistent(control, spawn):
    rec = spawn("victim")
    os.kill(rec.worker_pid, signal.SIGKILL)
    wait_for(lambda: not is_alive(rec.worker_pid, rec.worker_start), what="the worker to die")
    rec = control.find("victim")
    assert rec.state is State.DEAD and "worker" in rec.error
    from vmm.cli.ps import status_text

    assert status_text(rec) == "Dead (worker gone)"
    with pytest.raises(WorkerUnreachable):
        control.client(rec).status()
    paths = control.paths(rec)
    control.remove("victim")
    assert not paths.root.exists()  # no socket, log or spec left


def test_rm_force_of_running_machine(control, spawn):
    rec = spawn("doomed")
    paths = control.paths(rec)
    control.remove("doomed", force=True)
    assert not is_alive(rec.worker_pid, rec.worker_start)
    assert not paths.root.exists()
    assert control.machines.list() == []


def test_console_echo_through_the_guest(control, spawn):
    rec = spawn("echo")
    sock = control.client(rec).console()
    sock.settimeout(20)
    sock.sendall(b"ping\n")
    got = b""
    while b"ping\n" not in got:
        chunk = sock.recv(4096)
        assert chunk, "console closed"
        got += chunk
    sock.close()
    assert b"ping\n" in read(control.paths(rec).console_log)


def test_exec_without_vsock_is_a_clear_error(control, spawn):
    rec = spawn("novsock")
    with pytest.raises(Unavailable) as err:
        control.client(rec).exec(1024)
    assert "vsock" in err.value.message
    control.kill("novsock")
    control.wait("novsock")
    # an ended VM: the lingering worker says so, or it is gone already
    with pytest.raises((WrongState, WorkerUnreachable)):
        control.client(rec).exec(1024)


def test_stats(control, spawn):
    rec = spawn("numbers")
    s = control.stats("numbers")
    assert s["state"] == "running" and s["worker_rss_kib"] > 0 and s["vm"]["vcpus"] == 1


def test_concurrent_starts(control, spawn):
    recs = [spawn(f"c{i}", start=False) for i in range(4)]
    errors = []

    def go(r):
        try:
            open_control(control.state_dir).start(r.id)  # one store connection per thread
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=go, args=(r,)) for r in recs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    live = control.machines.reconcile_all(include_stopped=False)
    assert sorted(r.name for r in live) == ["c0", "c1", "c2", "c3"]
    assert len({r.worker_pid for r in live}) == 4


def test_wrong_state_over_the_api(control, spawn):
    rec = spawn("ws")
    client = control.client(rec)
    with pytest.raises(WrongState):
        client.resume()
    assert client.status()["state"] == "running"


def test_failed_start_is_a_clear_error_and_recorded(control):
    from vmm.worker.launch import WorkerStartError

    rec = control.machines.create("tiny", name="broken", config={
        "worker": {"factory": "tests.worker.nosuchmodule:create", "machine": {}}})
    with pytest.raises(WorkerStartError) as err:
        control.start("broken")
    assert "cannot load machine factory" in err.value.message and err.value.exit_status == 125
    rec = control.find("broken")
    assert (rec.state, rec.exit_code, rec.exit_reason) == (State.EXITED, 125, "error")
    assert "nosuchmodule" in rec.error
    assert not control.paths(rec).api_socket.exists()
    wait_for(lambda: not is_alive(rec.worker_pid, rec.worker_start), what="the failed worker to exit")

"""The `mm run` flow (attach, exit code, -d, --rm, Ctrl-C) with real workers and the
real tiny guest (see vmm/cli/run.py for why the command itself is not registered yet)."""
from __future__ import annotations

import os
import signal
import threading

import pytest

from vmm.cli.run import run_machine
from vmm.machines import NameInUse, State
from vmm.machines.options import RunOptions

from .conftest import read, wait_for


def _worker(**guest):
    return {"factory": "tests.worker.tinyguest:create", "machine": guest, "stop_timeout": 5.0}


@pytest.fixture
def out(tmp_path):
    fd = os.open(tmp_path / "out", os.O_RDWR | os.O_CREAT)
    yield fd, tmp_path / "out"
    os.close(fd)


def test_attached_run_streams_output_and_returns_exit_code(control, out):
    fd, path = out
    code = run_machine(control, RunOptions(image="tiny", name="att"), "tiny", _worker(exit_code=3, exit_at_once=True),
                       out_fd=fd)
    assert code == 3
    assert read(path) == b"hello from the tiny guest\nbye\n"
    assert control.find("att").state is State.EXITED


def test_rm_leaves_nothing(control, out):
    fd, _ = out
    code = run_machine(control, RunOptions(image="tiny", name="gone", auto_remove=True), "tiny",
                       _worker(exit_code=0, exit_at_once=True), out_fd=fd)
    assert code == 0
    assert control.machines.list() == []
    assert not any((control.state_dir / "machines").iterdir())


def test_detached_prints_id_and_keeps_running(control, out):
    fd, path = out
    assert run_machine(control, RunOptions(image="tiny", name="bg", detach=True), "tiny", _worker(), out_fd=fd) == 0
    rec = control.find("bg")
    assert read(path) == rec.id.encode() + b"\n" and rec.state is State.RUNNING


def test_duplicate_name_changes_nothing(control, out):
    fd, _ = out
    run_machine(control, RunOptions(image="tiny", name="dup", detach=True), "tiny", _worker(), out_fd=fd)
    before = control.machines.list()
    with pytest.raises(NameInUse):
        run_machine(control, RunOptions(image="tiny", name="dup", detach=True), "tiny", _worker(), out_fd=fd)
    assert control.machines.list() == before


def test_ctrl_c_asks_the_guest_to_shut_down(control, out):
    fd, path = out

    def interrupt():
        wait_for(lambda: b"hello" in read(path), what="the greeting")
        os.kill(os.getpid(), signal.SIGINT)

    t = threading.Thread(target=interrupt)
    t.start()
    code = run_machine(control, RunOptions(image="tiny", name="cc"), "tiny", _worker(exit_code=5), out_fd=fd)
    t.join()
    assert code == 5 and read(path).endswith(b"bye\n")


def _vmm_threads(supervisor_pid: int) -> dict[int, str]:
    """tid -> Cpus_allowed_list of every thread of the supervisor's VMM child."""
    with open(f"/proc/{supervisor_pid}/task/{supervisor_pid}/children") as f:
        (vmm,) = map(int, f.read().split())
    out = {}
    for tid in os.listdir(f"/proc/{vmm}/task"):
        with open(f"/proc/{vmm}/task/{tid}/status") as f:
            out[int(tid)] = next(line.split()[1] for line in f if line.startswith("Cpus_allowed_list:"))
    return out


def test_a_cpuset_confines_every_thread_of_the_vmm(control, out):
    fd, _ = out
    cpu = max(os.sched_getaffinity(0))
    run_machine(control, RunOptions(image="tiny", name="pinned", detach=True), "tiny",
                {**_worker(), "cpuset": [cpu]}, out_fd=fd)
    rec = control.find("pinned")
    threads = _vmm_threads(rec.worker_pid)
    assert len(threads) >= 2 and set(threads.values()) == {str(cpu)}, threads  # main, vCPU, ...


def test_a_cpuset_the_host_lacks_fails_the_start_clearly(control, out):
    from vmm.errors import MMError

    fd, _ = out
    with pytest.raises(MMError, match="cannot run the VM on CPUs"):
        run_machine(control, RunOptions(image="tiny", name="nocpu", detach=True), "tiny",
                    {**_worker(), "cpuset": [8000]}, out_fd=fd)
    assert "nocpu" not in [r.name for r in control.machines.list()]  # a failed start leaves no machine

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

"""Real workers with tiny guests started through the worker fork server on this host:
jail on and off, the fds the VMM ends up with, a stale server replaced, a server killed
with -9 in the middle of a request, workers that outlive their server.

Each test has its own runtime directory (MM_FORKSERVER_DIR) and so its own servers,
which it stops at the end; MM_FORKSERVER_PRELOAD adds a module of the test's own
(`fsmark`), so a test can make its server stale without touching the tree.
"""
from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest

from vmm.machines import State
from vmm.worker import forkserver_client as client
from vmm.worker.launch import worker_env

from .conftest import read, wait_for
from .test_jail import _console_result, _vmm_pid
from .tinyguest import TinyGuest

GREETING = b"hello from the tiny guest\n"


class FdProbe(TinyGuest):
    """A tiny guest whose VMM prints its open fds (number and kind) as the vCPUs start:
    after the jail, right before the first KVM_RUN."""

    def start(self) -> None:
        self.console_out(f"fds {json.dumps(fd_kinds('self'))}\n".encode())
        super().start()

    def __init__(self, config, console, events) -> None:
        self.console_out = console
        super().__init__(config, console, events)


def fd_probe(config, console, events) -> FdProbe:
    return FdProbe(dict(config), console, events)


class RamProbe(TinyGuest):
    """A tiny guest whose VMM says, as its vCPUs start, how much of its guest RAM exists:
    the whole of it when it took a spare's prepared memfd, one page (the guest's code)
    when it made its own."""

    def start(self) -> None:
        self.console_out(f"ram {os.fstat(self.mem.memfd).st_blocks * 512}\n".encode())
        super().start()

    def __init__(self, config, console, events) -> None:
        self.console_out = console
        super().__init__({**config, "hugepages": None}, console, events)  # as a real VM asks


def ram_probe(config, console, events) -> RamProbe:
    return RamProbe(dict(config), console, events)


def fd_kinds(pid: str | int) -> list[list]:
    """[fd, what it is] for every open fd of `pid`: inode numbers and directories left out."""
    out = []
    base = f"/proc/{pid}/fd"
    for name in sorted(os.listdir(base), key=int):
        try:
            target = os.readlink(f"{base}/{name}")
        except FileNotFoundError:
            continue  # listdir's own fd
        if "[" in target:  # socket:[123], anon_inode:[eventfd]
            target = target.split("[")[0].rstrip(":")
        out.append([int(name), os.path.basename(target)])  # the machine's files, whatever its id
    return out


@pytest.fixture
def fs(tmp_path, monkeypatch, state):
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "fsmark.py").write_text("VERSION = 1\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(lib), os.environ["PYTHONPATH"]]))
    monkeypatch.setenv("MM_FORKSERVER_DIR", str(tmp_path / "rt"))
    monkeypatch.setenv("MM_FORKSERVER_PRELOAD", "fsmark")
    monkeypatch.delenv("MM_FORKSERVER", raising=False)
    yield lib
    client.stop_all()


def names():
    return client.names_for(worker_env())


def server_pid(old: int | None = None) -> int:
    """The live server's pid (a new one, if `old` is given), once it answers."""
    def up():
        try:
            pid = client.ping(names())["pid"]
        except client.ForkServerError:
            return None
        return pid if pid != old else None
    return wait_for(up, timeout=60, what="a fork server")


def start(control, name: str, jail: bool = True, factory: str = "tests.worker.tinyguest:create", **machine):
    worker = {"factory": factory, "machine": machine, "stop_timeout": 5.0, "jail": {} if jail else {"enabled": False}}
    rec = control.machines.create("tiny-guest", name=name, config={"worker": worker, "cmd": ["greet"]})
    return control.start(rec.id)


def launch_line(control, rec) -> str:
    lines = [ln for ln in read(control.paths(rec).worker_log).decode().splitlines() if " launch[" in ln]
    assert len(lines) == 1, lines
    return lines[0].split("]: ", 1)[1]


def test_workers_go_through_the_fork_server_with_and_without_the_jail(control, fs):
    if os.geteuid() != 0:
        pytest.skip("the jail needs root (namespaces, cgroups, uid drop)")
    first = start(control, "first")
    assert launch_line(control, first) == "no fork server is running; starting the worker by exec, and a fork server"
    server = server_pid()
    for jail in (False, True):
        rec = start(control, f"forked-{jail}", jail=jail, exit_code=5)
        assert launch_line(control, rec).startswith("forked by the fork server as pid ")
        stat = open(f"/proc/{rec.worker_pid}/stat").read().rsplit(")", 1)[1].split()
        # one fork: the server's child (it ignores SIGCHLD: no zombie), in a session of its own
        assert rec.state is State.RUNNING and stat[1] == str(server) and stat[3] == str(rec.worker_pid)
        wait_for(lambda: GREETING in read(control.paths(rec).console_log), what="the guest's greeting")
        rec = control.stop(rec.id, timeout=20)
        assert (rec.state, rec.exit_code, rec.exit_reason) == (State.EXITED, 5, "poweroff")
    rec = control.start(control.machines.update(
        control.machines.create("tiny-guest", name="cell").id,
        config={"worker": {"factory": "tests.worker.test_jail:probe", "stop_timeout": 5.0, "jail": {},
                           "machine": {"attempt": "identity"}}}).id)
    assert launch_line(control, rec).startswith("forked by the fork server")
    facts = json.loads(_console_result(control, rec, "identity").removeprefix("identity "))
    assert facts["pid"] == 1 and facts["Seccomp"] == ["2"] and facts["NoNewPrivs"] == ["1"]
    assert facts["CapEff"] == ["0000000000000000"] and facts["Uid"][0] != "0"
    vmm = _vmm_pid(rec.worker_pid)
    for ns in ("mnt", "pid", "net", "ipc", "uts", "cgroup"):
        assert os.readlink(f"/proc/{vmm}/ns/{ns}") != os.readlink(f"/proc/{server}/ns/{ns}"), ns
    assert client.ping(names())["launched"] == 3
    control.stop(rec.id, timeout=20)
    control.stop(first.id, timeout=20)


def test_the_vmm_holds_the_same_fds_forked_or_execd(control, fs, monkeypatch):
    def fds_of(name: str, jail: bool):
        rec = start(control, name, jail=jail, factory="tests.worker.test_forkserver:fd_probe")
        line = wait_for(lambda: b"\nfds " in b"\n" + read(control.paths(rec).console_log)
                        and read(control.paths(rec).console_log), what="the VMM's fd list")
        vmm = json.loads((b"\n" + line).split(b"\nfds ", 1)[1].split(b"\n", 1)[0])
        time.sleep(0.3)  # the supervisor has reported ready and closed the pipe
        supervisor = sorted(kind for _, kind in fd_kinds(rec.worker_pid))
        how = launch_line(control, rec)
        control.stop(rec.id, timeout=20)
        return vmm, supervisor, how

    for jail in ([False, True] if os.geteuid() == 0 else [False]):
        monkeypatch.setenv("MM_FORKSERVER", "0")
        execd = fds_of(f"exec-{jail}", jail)
        assert execd[2].startswith("the fork server is off")
        monkeypatch.delenv("MM_FORKSERVER")
        if jail is False:
            start(control, "warm-up", jail=False)  # starts the server
            server_pid()
        forked = fds_of(f"fork-{jail}", jail)
        assert forked[2].startswith("forked by the fork server")
        assert forked[0] == execd[0], jail  # the VMM's fd table, fd for fd
        assert forked[1] == execd[1], json.dumps([jail, forked[1], execd[1]])  # the supervisor's, by kind


def test_a_spare_prepares_the_next_vms_guest_ram(control, fs, monkeypatch):
    """vmm.prepared_ram through a real spare: it faults in MM_PREFAULT_MIB of a memfd while
    it waits, and the VMM it becomes takes that memfd; an exec'd worker makes its own."""
    from .tinyguest import MEMORY

    def ram_of(name: str) -> tuple[int, str]:
        rec = start(control, name, factory="tests.worker.test_forkserver:ram_probe")
        line = wait_for(lambda: b"\nram " in b"\n" + read(control.paths(rec).console_log)
                        and read(control.paths(rec).console_log), what="the VMM's guest RAM")
        ram = int((b"\n" + line).split(b"\nram ", 1)[1].split(b"\n", 1)[0])
        how = launch_line(control, rec)
        control.stop(rec.id, timeout=20)
        return ram, how

    monkeypatch.setenv("MM_PREFAULT_DELAY_S", "0")
    monkeypatch.setenv("MM_PREFAULT_MIB", "4")  # more than the tiny guest's 2 MiB: take() shrinks it
    start(control, "warm-up", jail=False)  # starts the server, with this environment
    server = server_pid()

    def prepared_spare():
        spare = client.ping(names())["spare"]
        if spare is None:
            return None
        for fd in os.listdir(f"/proc/{spare}/fd"):
            path = f"/proc/{spare}/fd/{fd}"
            if "memfd:mm-guest-ram" in os.readlink(path) and os.stat(path).st_blocks * 512 == 4 << 20:
                return spare
        return None
    wait_for(prepared_spare, timeout=30, what="a spare with its guest RAM prepared")
    ram, how = ram_of("prepared")
    assert how.startswith("forked by the fork server") and ram == MEMORY, (how, ram)
    assert client.ping(names())["pid"] == server
    monkeypatch.setenv("MM_FORKSERVER", "0")
    ram, how = ram_of("own")
    assert how.startswith("the fork server is off") and ram < MEMORY, (how, ram)


def test_a_stale_server_is_replaced_and_the_start_goes_on_by_exec(control, fs):
    start(control, "warm-up", jail=False)
    old = server_pid()
    (fs / "fsmark.py").write_text("VERSION = 22\n")
    rec = start(control, "after-edit", jail=False)
    line = launch_line(control, rec)
    assert f"is stale: {fs / 'fsmark.py'} changed since it started" in line
    assert line.endswith("; starting the worker by exec, and a fork server")
    wait_for(lambda: GREETING in read(control.paths(rec).console_log), what="the guest's greeting")
    new = server_pid(old)
    assert launch_line(control, start(control, "fresh", jail=False)) == f"forked by the fork server as pid " \
        f"{control.find('fresh').worker_pid}"
    assert new != old


def test_a_server_killed_mid_request_falls_back_to_exec(control, fs):
    start(control, "warm-up", jail=False)
    server = server_pid()
    os.kill(server, signal.SIGSTOP)  # the request waits in its socket's queue
    result = {}
    t = threading.Thread(target=lambda: result.update(rec=start(control, "through-a-kill", jail=False)))
    t.start()
    time.sleep(1.0)
    os.kill(server, signal.SIGKILL)
    t.join(timeout=120)
    rec = result["rec"]
    assert rec.state is State.RUNNING
    assert launch_line(control, rec) == (f"the fork server (pid {server}) hung up without answering; "
                                         f"starting the worker by exec, and a fork server")
    wait_for(lambda: GREETING in read(control.paths(rec).console_log), what="the guest's greeting")
    assert server_pid(server) != server  # and a new one came up


def test_workers_outlive_their_server(control, fs):
    start(control, "warm-up", jail=False)
    server = server_pid()
    rec = start(control, "orphan", jail=False, exit_code=4)
    assert launch_line(control, rec).startswith("forked by the fork server")
    assert client.stop_all() == [server]
    wait_for(lambda: not os.path.exists(f"/proc/{server}") or
             open(f"/proc/{server}/stat").read().split()[2] == "Z", what="the server's exit")
    assert control.client(rec).status()["state"] == "running"
    assert control.stop(rec.id, timeout=20).exit_code == 4

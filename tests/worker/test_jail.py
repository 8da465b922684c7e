"""The jailed worker on this host: real workers, real tiny guests, real attempts to get out.

Each attempt is made from inside the VMM after the jail is in place, by `probe` (this
module's machine factory, a TinyGuest that first tries one forbidden thing): at VM
start (the loop thread, right before the vCPUs run) or, for a running VM, when the
console receives `!probe`. An attempt the cell refuses (a host path outside it, a
write into it) prints its errno on the console; an attempt seccomp refuses kills the
VMM, and the supervisor records it for `mm ps` / `mm inspect`.
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import termios
import threading
import time

import pytest

from vmm import paths
from vmm.jail.cgroups import MachineCgroup, remove_stale
from vmm.jail.config import JAIL_ID_BASE
from vmm.machines import State
from vmm.worker.launch import WorkerStartError

from .conftest import read, wait_for
from .tinyguest import TinyGuest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the jail needs root (namespaces, cgroups, uid drop)")

MiB = 1 << 20


def _attempt(name: str, machine_dir: str) -> str:
    """Try one forbidden thing from inside the VMM; what the kernel said, if we live."""
    try:
        if name == "execve":
            os.execv("/bin/sh", ["sh", "-c", "true"])
        elif name == "open_shadow":
            open("/etc/shadow", "rb").close()
        elif name == "open_kvm":
            os.close(os.open("/dev/kvm", os.O_RDWR))
        elif name == "write_cell":
            os.close(os.open(os.path.join(machine_dir, "planted"), os.O_CREAT | os.O_WRONLY, 0o755))
        elif name == "inet_socket":
            socket.socket(socket.AF_INET, socket.SOCK_STREAM).close()
        elif name == "ptrace":
            libc = ctypes.CDLL(None, use_errno=True)
            libc.ptrace(16, 1, 0, 0)  # PTRACE_ATTACH
        elif name == "ioctl":
            fcntl.ioctl(0, termios.TIOCSTI, b"x")  # push a keystroke into a terminal
        elif name == "setuid":
            os.setuid(0)
        elif name == "hog":
            block = bytearray(512 * MiB)
            for i in range(0, len(block), 4096):
                block[i] = 1
        elif name == "memory":
            return _userfaultfd_on_a_memfd()
        elif name == "identity":
            with open("/proc/self/status") as f:
                status = dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
            keys = ("Uid", "Gid", "Groups", "CapEff", "CapPrm", "CapBnd", "NoNewPrivs", "Seccomp")
            facts = {k: status.get(k, "").split() for k in keys}
            facts["root"] = sorted(os.listdir("/"))
            facts["hostname"] = socket.gethostname()
            facts["pid"] = os.getpid()
            return "identity " + json.dumps(facts)
        return "ok"
    except OSError as exc:
        return f"errno {errno.errorcode.get(exc.errno, exc.errno)}"


def _exercise_devices(probe: "Probe") -> str:
    """Real virtio-blk and virtio-vsock devices, driven by the mock guest driver, doing
    their I/O inside the jail: block read/write/flush/discard/write-zeroes on a disk
    opened before it, and a guest-initiated vsock stream to the host's `<socket>_5000`."""
    import struct

    from devices.virtio.block import T_DISCARD, T_FLUSH, T_IN, T_OUT, T_WRITE_ZEROES
    from devices.virtio.mmio import MmioTransport
    from devices.virtio.testing import FakeGuestMemory, FakeInterrupt, MockDriver
    from devices.virtio.vsock import OP_RESPONSE, OP_RW, OP_SHUTDOWN
    from tests.unit.devices.virtio.test_vsock import Guest

    memory = FakeGuestMemory(8 << 20)
    disk = MockDriver(MmioTransport(probe.block, memory, FakeInterrupt(), probe.events), memory, queue_size=16)
    q = disk.queues[0]

    def request(kind, sector=0, data=b"", read_len=0):
        head = q.add([struct.pack("<IIQ", kind, 0, sector)] + ([data] if data else []), [read_len + 1])
        disk.kick(0)
        q.wait_used()
        out = q.written(head)
        return out[-1], out[:-1]

    payload = bytes(range(256)) * 32
    results = [request(T_OUT, 8, payload)[0], request(T_FLUSH)[0],
               request(T_WRITE_ZEROES, data=struct.pack("<QII", 64, 8, 0))[0],
               request(T_DISCARD, data=struct.pack("<QII", 128, 8, 0))[0]]
    status, data = request(T_IN, 8, read_len=len(payload))
    if results + [status] != [0] * 5 or data != payload:
        return f"block failed: statuses {results + [status]}, read back {data == payload}"

    vmem = FakeGuestMemory(16 << 20)
    guest = Guest(MockDriver(MmioTransport(probe.vsock, vmem, FakeInterrupt(), probe.events), vmem))
    guest.send(1, 777, 5000)  # OP_REQUEST to host port 5000: the device connects to <socket>_5000
    (resp, _), = guest.recv(match=lambda h: h.op in (OP_RESPONSE, 3))
    if resp.op != OP_RESPONSE:
        return "vsock: the host listener was not reached"
    guest.send(OP_RW, 777, 5000, b"ping")
    (rw, reply), = guest.recv(match=lambda h: h.op == OP_RW)
    guest.send(OP_SHUTDOWN, 777, 5000, flags=3)
    if reply != b"pong":
        return f"vsock: got {reply!r}"
    # host-initiated, from the VMM itself: what the exec bridge and the workload attach do
    own = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    own.settimeout(10)
    own.connect(probe.vsock.uds_path)
    own.sendall(b"CONNECT 1234\n")
    (req, _), = guest.recv(match=lambda h: h.op == 1)
    guest.send(OP_RESPONSE, 1234, req.src_port)
    line = own.recv(64)
    own.close()
    return "ok" if line.startswith(b"OK ") else f"vsock: host-initiated answer {line!r}"


def _userfaultfd_on_a_memfd() -> str:
    """What lazy restore and branch will do in the jail: a memfd mapped shared, a
    userfaultfd (user-mode faults: the VMM is unprivileged now) registered on it."""
    import mmap

    from vmm.jail import ioctls

    fd = os.memfd_create("mm-probe", os.MFD_CLOEXEC)
    os.ftruncate(fd, 1 << 20)
    area = mmap.mmap(fd, 1 << 20)
    libc = ctypes.CDLL(None, use_errno=True)
    uffd = libc.syscall(323, os.O_CLOEXEC | os.O_NONBLOCK | 1)  # userfaultfd(UFFD_USER_MODE_ONLY)
    if uffd < 0:
        return f"userfaultfd: errno {errno.errorcode[ctypes.get_errno()]}"
    api = ioctls.uffdio_api(api=0xAA)  # UFFD_API
    fcntl.ioctl(uffd, ioctls.USERFAULTFD["UFFDIO_API"], api)
    base = ctypes.addressof(ctypes.c_char.from_buffer(area))
    reg = ioctls.uffdio_register(range=ioctls.uffdio_range(base, 1 << 20), mode=1)  # MODE_MISSING
    fcntl.ioctl(uffd, ioctls.USERFAULTFD["UFFDIO_REGISTER"], reg)
    os.close(uffd)
    return "ok" if reg.ioctls & (1 << 3) else f"no UFFDIO_COPY on the range ({reg.ioctls:#x})"


class Probe(TinyGuest):
    """A tiny guest whose VMM first tries `config["attempt"]`, at start or on `!probe`."""

    def __init__(self, config, console, events) -> None:
        if config.pop("thread_before_jail", False):  # a factory that breaks the rule
            threading.Thread(target=time.sleep, args=(30,), daemon=True).start()
        self.attempt = config.pop("attempt", None)
        self.when = config.pop("when", "start")
        self.machine_dir = config.pop("machine_dir", "/nonexistent")
        self.console_out, self.events = console, events
        if self.attempt == "devices":  # opened before the jail, as the real machine does
            from devices.virtio.block.device import BlockDevice
            from devices.virtio.vsock.device import VsockDevice

            image = os.path.join(self.machine_dir, "disk.img")
            with open(image, "wb") as f:
                f.truncate(1 << 20)
            self.block = BlockDevice(image)
            self.vsock = VsockDevice(42, os.path.join(self.machine_dir, "v.sock"))
            self.vsock_socket = self.vsock.uds_path  # as vmm.machine.Machine announces its own
        super().__init__(config, console, events)

    def _try(self) -> None:
        if self.attempt == "devices":  # on a thread of its own: it inherits the jail too
            def run():
                try:
                    result = _exercise_devices(self)
                except Exception as exc:
                    result = f"{type(exc).__name__}: {exc}"
                self.console_out(f"probe devices: {result}\n".encode())
            threading.Thread(target=run, daemon=True).start()
            return
        result = _attempt(self.attempt, self.machine_dir)
        self.console_out(f"probe {self.attempt}: {result}\n".encode())

    def start(self) -> None:
        if self.when == "start" and self.attempt:
            self._try()
        super().start()

    def write_console(self, data: bytes) -> None:
        if b"!probe" in data and self.attempt:
            self._try()
            return
        super().write_console(data)


def probe(config, console, events) -> Probe:
    return Probe(dict(config), console, events)


# -- helpers --------------------------------------------------------------------------------

def _create(control, name: str, jail: dict | None = None, **machine):
    """A machine running `probe`, told its own directory (known once the record exists)."""
    rec = control.machines.create("tiny-guest", name=name)
    machine["machine_dir"] = str(control.paths(rec).root)
    worker = {"factory": "tests.worker.test_jail:probe", "machine": machine, "stop_timeout": 5.0,
              "jail": jail or {}}
    return control.machines.update(rec.id, config={"worker": worker})


def _start(control, name: str, jail: dict | None = None, **machine):
    return control.start(_create(control, name, jail, **machine).id)


def _vmm_pid(supervisor: int) -> int:
    """The jailed VMM is the supervisor's only child."""
    with open(f"/proc/{supervisor}/task/{supervisor}/children") as f:
        children = f.read().split()
    assert len(children) == 1, children
    return int(children[0])


def _status(pid: int) -> dict[str, list[str]]:
    with open(f"/proc/{pid}/status") as f:
        return {k: v.split() for k, v in (line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)}


def _console_result(control, rec, attempt: str) -> str:
    line = f"probe {attempt}: ".encode()
    text = wait_for(lambda: line in read(control.paths(rec).console_log) and read(control.paths(rec).console_log),
                    what=f"the probe's report on {attempt}")
    return text.split(line, 1)[1].split(b"\n", 1)[0].decode()


def mm(*args):
    proc = subprocess.run([sys.executable, "-m", "vmm", *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, (args, proc.stdout, proc.stderr)
    return proc.stdout


# -- what the VMM is ------------------------------------------------------------------------

def test_the_vmm_is_jailed(control):
    rec = _start(control, "cell", attempt="identity")
    facts = json.loads(_console_result(control, rec, "identity").removeprefix("identity "))
    assert MachineCgroup.for_machine(rec.id).limits()["cpus"] is None  # no CPU-time limit unless one is asked for
    uid = JAIL_ID_BASE + rec.worker_pid
    assert facts["Uid"] == [str(uid)] * 4 and facts["Gid"] == [str(uid)] * 4 and facts["Groups"] == []
    assert facts["CapEff"] == facts["CapPrm"] == facts["CapBnd"] == ["0000000000000000"]
    assert facts["NoNewPrivs"] == ["1"] and facts["Seccomp"] == ["2"]
    assert facts["pid"] == 1 and facts["hostname"] == rec.short_id
    top = control.paths(rec).root.parts[1]
    code = paths.REPO_ROOT.parts[1]  # where the checkout is: /work here, elsewhere in CI
    assert facts["root"] == sorted({"proc", top, "usr", code})  # machine dir, code, /proc: nothing else

    vmm = _vmm_pid(rec.worker_pid)  # the same, seen from the host
    status = _status(vmm)
    assert status["Uid"] == [str(uid)] * 4 and status["CapBnd"] == ["0000000000000000"]
    assert status["Seccomp"] == ["2"] and status["NoNewPrivs"] == ["1"]
    for ns in ("mnt", "pid", "net", "ipc", "uts", "cgroup"):
        assert os.readlink(f"/proc/{vmm}/ns/{ns}") != os.readlink(f"/proc/self/ns/{ns}"), ns
    assert os.readlink(f"/proc/{rec.worker_pid}/ns/mnt") == os.readlink("/proc/self/ns/mnt")  # supervisor: host
    # the supervisor made the VMM's network namespace (vmm.jail.libc.new_netns) and stayed in the host's;
    # the VMM's holds nothing but its loopback
    assert os.readlink(f"/proc/{rec.worker_pid}/ns/net") == os.readlink("/proc/self/ns/net")
    with open(f"/proc/{vmm}/net/dev") as f:
        assert [line.split(":")[0].strip() for line in f.readlines()[2:]] == ["lo"]
    assert len([fd for fd in os.listdir(f"/proc/{rec.worker_pid}/fd")
                if os.readlink(f"/proc/{rec.worker_pid}/fd/{fd}").startswith("net:")]) == 0  # no copy kept
    assert not os.path.exists(f"/proc/{vmm}/root/etc")
    assert sorted(os.listdir(f"/proc/{vmm}/root/proc")) == ["1", "self", "thread-self"]
    assert control.client(rec).status()["pid"] == rec.worker_pid  # the API names the supervisor
    assert os.stat(control.paths(rec).root).st_mode & 0o777 == 0o710
    rec = control.stop("cell", timeout=20)
    assert rec.state is State.EXITED and rec.exit_reason == "poweroff"
    assert not os.path.exists(f"/proc/{vmm}")


def test_cgroup_limits_are_applied(control):
    jail = {"cpus": 0.5, "memory": 200 * MiB, "pids": 40}
    rec = _start(control, "limited", jail=jail)
    vmm = _vmm_pid(rec.worker_pid)
    cg = MachineCgroup.for_machine(rec.id)
    assert cg.limits() == {"cpus": 0.5, "memory": 200 * MiB, "pids": 40}
    for d in cg.unique_dirs():  # the VMM is inside, the supervisor is not
        procs = (d / "cgroup.procs").read_text().split()
        assert str(vmm) in procs and str(rec.worker_pid) not in procs
    if cg.version == 2:
        assert (cg.dirs["cpu"] / "cpu.max").read_text().split() == ["50000", "100000"]
        assert (cg.dirs["memory"] / "memory.max").read_text().strip() == str(200 * MiB)
    else:
        assert (cg.dirs["cpu"] / "cpu.cfs_quota_us").read_text().strip() == "50000"
        assert (cg.dirs["memory"] / "memory.limit_in_bytes").read_text().strip() == str(200 * MiB)
    assert (cg.dirs["pids"] / "pids.max").read_text().strip() == "40"
    # the VMM got in without the kernel's slow move (vmm.jail.cgroups, "Getting the VMM in")
    how = "joined (v1 tasks)" if cg.version == 1 else "born in it (clone3)"
    assert f"pids 40, cgroup {how}" in read(control.paths(rec).worker_log).decode()
    with open(f"/proc/{vmm}/limits") as f:
        limits = f.read()
    assert "Max open files            4096                 4096" in limits
    assert "Max core file size        0                    0" in limits
    control.stop("limited", timeout=20)
    assert not any(d.exists() for d in cg.unique_dirs())  # removed with the VMM


# -- what the cell refuses (errno) ----------------------------------------------------------

@pytest.mark.parametrize("attempt, expected", [
    ("open_shadow", "errno ENOENT"),   # a host path outside the cell does not exist in it
    ("open_kvm", "errno ENOENT"),      # no /dev: the VMM's devices are fds opened before
    ("write_cell", "errno EROFS"),     # the machine directory is read-only in the cell
])
def test_the_cell_refuses(control, attempt, expected):
    rec = _start(control, f"cell-{attempt.replace('_', '-')}", attempt=attempt)
    assert _console_result(control, rec, attempt) == expected
    assert control.find(rec.id).state is State.RUNNING  # a refused open is not a violation
    assert not (control.paths(rec).root / "planted").exists()
    control.stop(rec.id, timeout=20)


def test_userfaultfd_and_memfd_work_in_the_jail(control):
    """Snapshot restore and live branch must stay possible inside the jail."""
    rec = _start(control, "uffd", attempt="memory")
    assert _console_result(control, rec, "memory") == "ok"
    assert control.find(rec.id).state is State.RUNNING
    control.stop(rec.id, timeout=20)


# -- what seccomp kills -------------------------------------------------------------------------

KILLS = {
    "execve": "execve (syscall 59)",
    "inet_socket": "socket of family AF_INET (syscall 41)",
    "ptrace": "ptrace (syscall 101)",
    "ioctl": "ioctl TIOCSTI on fd 0 (syscall 16)",
    "setuid": "setuid (syscall 105)",
}


@pytest.mark.parametrize("attempt", sorted(KILLS))
def test_seccomp_kills_at_start_and_says_why(control, attempt):
    rec = _create(control, f"kill-{attempt.replace('_', '-')}", attempt=attempt)
    with pytest.raises(WorkerStartError) as err:
        control.start(rec.id)
    assert f"killed by seccomp: {KILLS[attempt]}" in err.value.message
    rec = control.find(rec.id)
    assert (rec.state, rec.exit_code, rec.exit_reason) == (State.EXITED, 159, "seccomp")
    assert KILLS[attempt] in rec.error
    assert f"probe {attempt}" not in read(control.paths(rec).console_log).decode()  # it never returned
    assert KILLS[attempt] in read(control.paths(rec).worker_log).decode()


def test_seccomp_kill_of_a_running_vm_shows_in_ps_and_inspect(control):
    rec = _start(control, "running-victim", attempt="execve", when="console")
    wait_for(lambda: b"hello from the tiny guest" in read(control.paths(rec).console_log), what="the greeting")
    with control.client(rec).console() as stream:
        stream.sendall(b"!probe\n")
        wait_for(lambda: control.find(rec.id).state is State.EXITED, what="the VMM's death to be recorded")
    rec = control.find(rec.id)
    assert (rec.exit_code, rec.exit_reason) == (159, "seccomp") and "execve (syscall 59)" in rec.error
    ps = json.loads(mm("ps", "-a", "--format", "json"))
    row = next(r for r in ps if r["name"] == "running-victim")
    assert (row["state"], row["exit_code"], row["exit_reason"]) == ("exited", 159, "seccomp")
    assert "Exited (159)" in mm("ps", "-a")
    info = json.loads(mm("inspect", "running-victim", "--json"))
    assert info["exit_reason"] == "seccomp" and "killed by seccomp: execve" in info["error"]


def test_a_jail_that_cannot_be_built_stops_the_start_clearly(control):
    rec = _create(control, "no-kernel", jail={"ro_paths": ["/nonexistent/vmlinux"]})
    with pytest.raises(WorkerStartError) as err:
        control.start(rec.id)
    assert "/nonexistent/vmlinux does not exist" in err.value.message
    rec = control.find(rec.id)
    assert (rec.state, rec.exit_code) == (State.EXITED, 125) and "does not exist" in rec.error

    rec = _create(control, "threaded", thread_before_jail=True)
    with pytest.raises(WorkerStartError) as err:
        control.start(rec.id)
    assert "2 threads run before the jail" in err.value.message


def test_devices_do_their_io_in_the_jail(control):
    """virtio-blk and virtio-vsock on their own threads, under the filter, in the cell;
    the host listener for a guest-initiated stream sits in the machine directory."""
    rec = _start(control, "devices", attempt="devices", when="console")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    path = control.paths(rec).root / "v.sock_5000"
    listener.bind(str(path))
    os.chmod(path, 0o666)  # the VM's uid must be able to connect (vmm.jail.cell)
    listener.listen()
    listener.settimeout(30)
    with control.client(rec).console() as stream:
        stream.sendall(b"!probe\n")
        conn, _ = listener.accept()
        conn.settimeout(30)
        assert conn.recv(4) == b"ping"
        conn.sendall(b"pong")
        assert _console_result(control, rec, "devices") == "ok"
    vsock, api = os.stat(control.paths(rec).root / "v.sock"), os.stat(control.paths(rec).api_socket)
    assert (vsock.st_uid, vsock.st_gid, vsock.st_mode & 0o777) == (0, JAIL_ID_BASE + rec.worker_pid, 0o660)
    assert (api.st_uid, api.st_mode & 0o777) == (0, 0o600)  # the VMM cannot call its own API
    conn.close()
    listener.close()
    assert control.find(rec.id).state is State.RUNNING
    control.stop(rec.id, timeout=20)


# -- the supervisor --------------------------------------------------------------------------

def test_sigterm_to_the_worker_is_a_graceful_stop(control):
    rec = _start(control, "term", exit_code=4)
    wait_for(lambda: b"hello from the tiny guest" in read(control.paths(rec).console_log), what="the greeting")
    os.kill(rec.worker_pid, signal.SIGTERM)
    assert control.wait(rec.id) == 4
    assert control.find(rec.id).exit_reason == "poweroff"
    assert b"bye\n" in read(control.paths(rec).console_log)


def test_killing_the_supervisor_kills_the_vmm(control):
    rec = _start(control, "orphan")
    vmm = _vmm_pid(rec.worker_pid)
    os.kill(rec.worker_pid, signal.SIGKILL)
    wait_for(lambda: not os.path.exists(f"/proc/{vmm}"), what="the VMM to follow its supervisor")
    assert control.find(rec.id).state is State.DEAD
    cg = MachineCgroup.for_machine(rec.id)  # nobody was left to remove it...
    assert all(d.exists() for d in cg.unique_dirs())
    assert set(remove_stale(min_age=0)) >= set(cg.unique_dirs())  # ...until the next one tidies up
    assert not any(d.exists() for d in cg.unique_dirs())


def _swap_total() -> int:
    with open("/proc/meminfo") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("SwapTotal:"))


@pytest.mark.skipif(_swap_total() > 0, reason="with swap on, the cgroup swaps instead of OOM-killing")
def test_memory_limit_ends_in_a_recorded_oom_kill(control):
    rec = _start(control, "hog", jail={"memory": 128 * MiB}, attempt="hog", when="console")
    with control.client(rec).console() as stream:
        stream.sendall(b"!probe\n")
        wait_for(lambda: control.find(rec.id).state is State.EXITED, what="the OOM kill to be recorded")
    rec = control.find(rec.id)
    assert (rec.exit_code, rec.exit_reason) == (137, "oom")
    assert "memory limit of 128 MiB" in rec.error


def test_no_jail_runs_plainly_and_warns(control):
    rec = _start(control, "plain", jail={"enabled": False}, attempt="identity")
    facts = json.loads(_console_result(control, rec, "identity").removeprefix("identity "))
    assert facts["Uid"] == ["0"] * 4 and facts["Seccomp"] == ["0"] and "etc" in facts["root"]
    assert b"--no-jail" in read(control.paths(rec).worker_log)
    control.stop(rec.id, timeout=20)

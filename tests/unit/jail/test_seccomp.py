"""The compiled filters, loaded for real in forked children (no_new_privs: no root needed).

What the VMM needs keeps working under the process filter; a denied call stops in the
kernel and reaches whoever holds the listener, with its number and arguments; a
stacked role filter kills outright.
"""
from __future__ import annotations

import os
import select
import signal
import socket
import threading
import time

import pytest

from vmm.jail import channel, libc, seccomp
from vmm.jail.seccomp import Violation


def _child(body, sock: socket.socket) -> None:
    """Run `body(sock)` in this forked child under the process filter, then exit."""
    code = 1
    try:
        libc.prctl(libc.PR_SET_NO_NEW_PRIVS, 1)
        listener = seccomp.install()
        channel.send(sock, {"op": "listener"}, fd=listener)
        os.close(listener)
        body(sock)
        code = 0
    finally:
        os._exit(code)


def _fork(body):
    parent, child = channel.pair()
    pid = os.fork()
    if pid == 0:
        parent.close()
        _child(body, child)
    child.close()
    message, fds = channel.recv(parent)
    assert message == {"op": "listener"} and len(fds) == 1
    return pid, parent, fds[0]


def _everyday(sock: socket.socket) -> None:
    """What the VMM does all day, on the main thread and on new threads."""
    results = []

    def worker():
        a, b = socket.socketpair()  # AF_UNIX
        a.sendall(b"x")
        results.append(b.recv(1))
        a.close()
        b.close()

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    with open("/proc/self/status") as f:  # io.open asks isatty (TCGETS)
        assert "Seccomp:\t2" in f.read()
    r, w = os.pipe2(os.O_CLOEXEC)
    os.set_blocking(r, False)
    os.write(w, b"y")
    time.sleep(0.001)
    assert results == [b"x"] and os.read(r, 1) == b"y"
    channel.send(sock, {"op": "ok"})


def test_everyday_calls_pass_the_filter():
    pid, sock, listener = _fork(_everyday)
    message, _ = channel.recv(sock)
    _, status = os.waitpid(pid, 0)
    assert message == {"op": "ok"} and os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert not select.select([listener], [], [], 0)[0] or _hung_up(listener)
    os.close(listener)


def _hung_up(fd: int) -> bool:
    p = select.poll()
    p.register(fd, select.POLLIN)
    return any(ev & select.POLLHUP for _, ev in p.poll(0))


@pytest.mark.parametrize("attempt, name, detail", [
    (lambda: os.execv("/bin/true", ["true"]), "execve", "execve"),
    (lambda: socket.socket(socket.AF_INET6, socket.SOCK_DGRAM), "socket", "socket of family AF_INET6"),
    (lambda: os.kill(1, 0), "kill", "kill"),
])
def test_a_denied_call_reaches_the_listener_and_never_runs(attempt, name, detail):
    def body(sock):
        channel.send(sock, {"op": "trying"})
        attempt()
        channel.send(sock, {"op": "it ran"})  # never: the call does not return

    pid, sock, listener = _fork(body)
    assert channel.recv(sock)[0] == {"op": "trying"}
    assert select.select([listener], [], [], 30)[0], "no notification"
    v = seccomp.receive(listener)
    assert v.name == name and detail in v.text() and v.tid == pid
    os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    sock.setblocking(False)
    with pytest.raises((BlockingIOError, channel.ChannelClosed)):
        channel.recv(sock)
    os.close(listener)


def test_a_stacked_role_filter_kills_outright():
    pid = os.fork()
    if pid == 0:
        try:
            libc.prctl(libc.PR_SET_NO_NEW_PRIVS, 1)
            seccomp.restrict_thread("vcpu")
            os.getpid()             # runtime: allowed
            socket.socketpair()     # the loop's, not a vCPU thread's: SIGSYS
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGSYS


def test_violation_texts():
    from vmm.kvm.abi import IOCTLS

    assert Violation(16, (5, IOCTLS["KVM_CREATE_VM"], 0, 0, 0, 0), 42).text() == \
        "killed by seccomp: ioctl KVM_CREATE_VM on fd 5 (syscall 16) on thread 42"
    assert Violation(56, (0x20000, 0, 0, 0, 0, 0), 7).detail() == "clone with flags 0x20000"
    assert Violation(41, (2, 1, 0, 0, 0, 0), 7).detail() == "socket of family AF_INET"
    assert Violation(59, (0,) * 6, 7).name == "execve"


def test_the_compiled_filter_is_cached_privately(tmp_path):
    cache = tmp_path / "seccomp"
    program = seccomp.process_program_cached(str(cache))
    assert program == seccomp.process_program()
    (f,) = cache.iterdir()
    assert f.name.startswith("process-") and f.read_bytes() == program
    assert (cache.stat().st_mode & 0o777, f.stat().st_mode & 0o777) == (0o700, 0o600)
    f.write_bytes(b"\0" * 8)  # read back as is: the file, not a compile, is what is used
    assert seccomp.process_program_cached(str(cache)) == b"\0" * 8
    f.unlink()
    assert seccomp.process_program_cached(str(cache)) == program  # a missing file is compiled again


def test_a_cache_others_can_write_is_refused(tmp_path):
    from vmm.jail.errors import JailError

    cache = tmp_path / "seccomp"
    seccomp.process_program_cached(str(cache))
    (f,) = cache.iterdir()
    f.chmod(0o666)
    with pytest.raises(JailError, match="not private") as err:
        seccomp.process_program_cached(str(cache))
    assert str(cache) in err.value.hint
    f.chmod(0o600)
    cache.chmod(0o777)
    with pytest.raises(JailError, match="not private"):
        seccomp.process_program_cached(str(cache))

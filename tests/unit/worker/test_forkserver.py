"""The worker fork server without KVM: its wire format, its private directory and name,
its freshness check, who may ask it, and a real server process forking a stand-in
worker (`fake_worker`, this module's entry point) that reports what it was given."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vmm.paths import REPO_ROOT
from vmm.worker import forkserver_client as client
from vmm.worker import forkserver_proto as proto
from vmm.worker.forkserver import Imported
from vmm.worker.launch import worker_env

ENTRY = "tests.unit.worker.test_forkserver:fake_worker"


def fake_worker(argv: list[str]) -> int:
    """In the forked worker: write what it got to argv[0], report ready on argv[-1]."""
    out, ready = argv[0], int(argv[-1])
    import fsprobe  # noqa: F401  # the preloaded module, as the server has it

    facts = {"pid": os.getpid(), "ppid": os.getppid(), "sid": os.getsid(0), "cwd": os.getcwd(),
             "umask": os.umask(0), "env": dict(os.environ), "argv": sys.argv,
             "fds": _open_fds(), "ready": ready,
             "version": getattr(sys.modules["fsprobe"], "VERSION", None)}
    Path(out).write_text(json.dumps(facts))
    print("fake worker ran", flush=True)
    os.write(ready, json.dumps({"ok": True, "pid": os.getpid()}).encode() + b"\n")
    return 0


def _open_fds() -> list[int]:
    """Open fds, probed one by one (listing /proc/self/fd would open one more)."""
    fds = []
    for fd in range(1024):
        try:
            os.fstat(fd)
        except OSError:
            continue
        fds.append(fd)
    return fds


# -- wire format, directory, name --------------------------------------------------------

def test_messages_carry_fds_and_bad_ones_are_refused():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    r, w = os.pipe()
    proto.send(a, {"op": "x", "n": 1}, [w])
    message, fds = proto.recv(b)
    assert message == {"op": "x", "n": 1} and len(fds) == 1
    assert os.get_inheritable(fds[0]) is False  # arrived close-on-exec
    os.write(fds[0], b"y")
    assert os.read(r, 1) == b"y"
    for data in (b"not json", b"[1, 2]"):
        a.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, w.to_bytes(4, sys.byteorder))])
        with pytest.raises(ValueError):
            proto.recv(b)
    a.close()
    assert proto.recv(b) == (None, [])
    for fd in (r, w, *fds):
        os.close(fd)


def test_private_dir_is_made_0700_and_an_open_one_is_refused(tmp_path):
    made = proto.private_dir(tmp_path / "a" / "rt")
    assert os.stat(made).st_mode & 0o777 == 0o700
    open_dir = tmp_path / "open"
    open_dir.mkdir(mode=0o755)
    open_dir.chmod(0o755)
    with pytest.raises(proto.ForkServerError, match="not a private directory"):
        proto.private_dir(open_dir)
    (tmp_path / "link").symlink_to(made)
    with pytest.raises(proto.ForkServerError, match="not a private directory"):
        proto.private_dir(tmp_path / "link")


def test_the_name_changes_with_what_the_worker_would_import():
    base = proto.fingerprint("/a")
    assert base == proto.fingerprint("/a")
    assert len({base, proto.fingerprint("/b"), proto.fingerprint("/a", "m:f"),
                proto.fingerprint("/a", proto.ENTRY, ["x"])}) == 4
    assert proto.extra_preload({"MM_FORKSERVER_PRELOAD": " a, b ,,"}) == ["a", "b"]
    start_up = proto.interpreter_env({"PYTHONPATH": "/a", "PYTHONHASHSEED": "0", "LD_PRELOAD": "x", "MM_X": "1"})
    assert start_up == "LD_PRELOAD=x\0PYTHONHASHSEED=0\0PYTHONPATH=/a"  # MM_* come with each request


def test_imported_files_go_stale_when_changed_or_removed(tmp_path, monkeypatch):
    mod = tmp_path / "fs_stale_probe.py"
    mod.write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    __import__("fs_stale_probe")
    try:
        imported = Imported()
        assert imported.stale() is None
        assert any(path == str(mod) for path, *_ in imported.files)
        assert os.path.realpath(sys.executable) in {path for path, *_ in imported.files}
        mod.write_text("X = 22\n")  # another size: stale even within one mtime tick
        assert imported.stale() == str(mod)
        imported = Imported()
        mod.unlink()
        assert imported.stale() == str(mod)
    finally:
        sys.modules.pop("fs_stale_probe", None)


def test_a_pipe_whose_writer_died_with_the_server_has_no_writer():
    dead = subprocess.Popen(["true"])
    dead.wait()
    r, w = os.pipe()
    os.close(w)
    assert client.has_writer(r, dead.pid) is False
    os.close(r)
    r, w = os.pipe()  # a forked worker holds the write end
    holder = subprocess.Popen(["sleep", "30"], pass_fds=[w])
    os.close(w)
    try:
        assert client.has_writer(r, dead.pid) is True
    finally:
        holder.kill()
        holder.wait()
        os.close(r)


# -- a real server ----------------------------------------------------------------------------

@pytest.fixture
def server_env(tmp_path, monkeypatch):
    """A private runtime directory, and a module `fsprobe` the server preloads."""
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "fsprobe.py").write_text("VERSION = 1\n")
    monkeypatch.setenv("MM_FORKSERVER_DIR", str(tmp_path / "rt"))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(lib), str(REPO_ROOT)]))
    env = {**worker_env(), "MM_FORKSERVER_PRELOAD": "fsprobe", "MM_FORKSERVER_IDLE_S": "120"}
    yield env, lib
    for pid in client.stop_all():
        _wait_gone(pid)


def _start_server(env: dict[str, str]) -> tuple[proto.Names, int]:
    names = client.names_for(env, ENTRY)
    with open(names.log, "ab") as log:
        proc = subprocess.Popen(client.server_argv(names, ENTRY), env=env, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=log, start_new_session=True)
    deadline = time.monotonic() + 60
    while True:
        try:
            return names, client.ping(names)["pid"]
        except client.NoServer:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the server did not come up: {names.log.read_text()}") from None
            time.sleep(0.05)


def _wait_gone(pid: int) -> None:
    for _ in range(400):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        if Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z":  # our child (Popen): exited
            return
        time.sleep(0.025)
    raise AssertionError(f"pid {pid} is still alive")


def _launch(names: proto.Names, env: dict[str, str], tmp_path: Path) -> tuple[int, dict, dict, bytes]:
    out = tmp_path / f"facts-{time.monotonic_ns()}.json"
    log = tmp_path / "worker.log"
    r, w = os.pipe2(os.O_CLOEXEC)
    log_fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        pid = client.launch(names, [str(out)], {**env, "MM_KNOB": "caller's"}, w, log_fd)
    finally:
        os.close(w)
        os.close(log_fd)
    with os.fdopen(r, "rb") as f:
        ready = json.loads(f.readline())
    return pid, ready, json.loads(out.read_text()), log.read_bytes()


def test_the_server_forks_a_worker_as_exec_would_have_started_it(server_env, tmp_path):
    env, _ = server_env
    names, server = _start_server(env)
    assert os.stat(names.sock).st_mode & 0o777 == 0o600
    spare = wait_for_spare(names)
    os.chdir(tmp_path)
    old = os.umask(0o027)
    try:
        # the first from the spare; the second at once, before a new spare: forked for it
        launches = [_launch(names, env, tmp_path), _launch(names, env, tmp_path)]
    finally:
        os.umask(old)
        os.chdir(REPO_ROOT)
    assert launches[0][0] == spare and launches[1][0] != spare
    for pid, ready, facts, _ in launches:
        assert ready == {"ok": True, "pid": pid} and facts["pid"] == pid
        assert facts["env"]["MM_KNOB"] == "caller's" and facts["cwd"] == str(tmp_path) and facts["umask"] == 0o027
        # one fork: the server's child, in a session of its own, reaped by the kernel
        assert facts["ppid"] == server and facts["sid"] == pid
        assert facts["fds"] == [0, 1, 2, facts["ready"]]  # none of the server's
        assert facts["argv"] == ["-c", facts["argv"][1], str(facts["ready"])] and facts["version"] == 1
        _wait_reaped(pid)
    assert launches[1][3] == b"fake worker ran\n" * 2
    assert client.ping(names)["launched"] == 2
    assert wait_for_spare(names) not in (spare, launches[1][0])  # the next one, forked after the delay


def _wait_reaped(pid: int) -> None:
    """A worker of the server's that exited is gone at once: no zombie waits for a reaper."""
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{pid}"):
        assert time.monotonic() < deadline, f"pid {pid} is still there: {Path(f'/proc/{pid}/stat').read_text()}"
        time.sleep(0.01)


def wait_for_spare(names: proto.Names) -> int:
    deadline = time.monotonic() + 30
    while not client.ping(names).get("spare"):
        assert time.monotonic() < deadline, "the server made no spare"
        time.sleep(0.02)
    return client.ping(names)["spare"]


def test_a_dead_spare_is_replaced_by_a_fork_and_a_stopped_server_takes_its_spare_along(server_env, tmp_path):
    env, _ = server_env
    names, server = _start_server(env)
    spare = wait_for_spare(names)
    os.kill(spare, signal.SIGKILL)
    _wait_reaped(spare)
    pid, ready, facts, _ = _launch(names, env, tmp_path)
    assert pid != spare and ready == {"ok": True, "pid": pid} and facts["ppid"] == server
    spare = wait_for_spare(names)
    assert client.stop_all() == [server]
    _wait_gone(server)
    _wait_reaped(spare)  # it saw its socket close: no process of the server's is left


def test_a_changed_file_makes_the_server_refuse_and_exit_and_a_new_one_runs_new_code(server_env, tmp_path):
    env, lib = server_env
    names, server = _start_server(env)
    assert _launch(names, env, tmp_path)[2]["version"] == 1
    (lib / "fsprobe.py").write_text("VERSION = 22\n")
    with pytest.raises(client.Stale, match="fsprobe.py changed"):
        _launch(names, env, tmp_path)
    _wait_gone(server)
    assert not names.sock.exists()
    with pytest.raises(client.NoServer):
        client.ping(names)
    names, second = _start_server(env)
    assert second != server and _launch(names, env, tmp_path)[2]["version"] == 22


def test_another_uid_is_refused(server_env, monkeypatch):
    if os.geteuid() != 0:
        pytest.skip("needs root to connect as another uid")
    import tempfile

    env, _ = server_env
    outer = Path(tempfile.mkdtemp(prefix="mm-fs-uid-"))  # /tmp: every uid can pass through
    outer.chmod(0o711)
    monkeypatch.setenv("MM_FORKSERVER_DIR", str(outer / "rt"))
    names, _ = _start_server(env)
    # Open the way on purpose (0700 dir, 0600 socket keep others out): SO_PEERCRED must still refuse.
    names.dir.chmod(0o711)
    names.sock.chmod(0o666)
    code = ("import os, sys; os.setgid(65534); os.setuid(65534); sys.path.insert(0, sys.argv[1]); "
            "from vmm.worker import forkserver_proto as p; import socket; "
            "s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET); s.connect(sys.argv[2]); "
            "p.send(s, {'op': 'ping'}); print(p.recv(s)[0]['error'])")
    out = subprocess.run([sys.executable, "-c", code, str(REPO_ROOT), str(names.sock)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "uid 65534 may not use the fork server of uid 0"
    assert "refused pid" in names.log.read_text()


def test_a_server_killed_mid_request_leaves_a_clear_error(server_env):
    env, _ = server_env
    names, server = _start_server(env)
    os.kill(server, signal.SIGSTOP)
    r, w = os.pipe2(os.O_CLOEXEC)
    # the request is queued on the stopped server's socket long before the kill
    killer = subprocess.Popen(["sh", "-c", f"sleep 1; kill -9 {server}"])
    try:
        with pytest.raises(client.Vanished) as info:
            client.launch(names, ["x"], env, w, w)
        assert info.value.pid == server
        os.close(w)
        assert client.has_writer(r, server) is False  # nothing was forked: the launcher may exec
    finally:
        killer.wait()
        os.close(r)


def test_stop_all_stops_servers_and_removes_dead_ones(server_env):
    env, _ = server_env
    names, server = _start_server(env)
    dead = proto.Names(names.dir, "0" * 20)
    socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET).bind(str(dead.sock))  # no one listens
    assert client.stop_all() == [server]
    _wait_gone(server)
    assert not names.sock.exists() and not dead.sock.exists()
    assert client.stop_all() == []  # the stopped one's lock and log go once it is gone
    assert sorted(os.listdir(names.dir)) == []


def test_an_idle_server_exits(server_env):
    env, _ = server_env
    names, server = _start_server({**env, "MM_FORKSERVER_IDLE_S": "0.5"})
    _wait_gone(server)
    assert not names.sock.exists()
    assert "exiting: idle after 0 launches" in names.log.read_text()


def test_a_server_that_does_not_answer_is_reported_not_waited_for(server_env, monkeypatch):
    env, _ = server_env
    names, server = _start_server(env)
    monkeypatch.setattr(client, "REPLY_TIMEOUT_S", 0.5)
    os.kill(server, signal.SIGSTOP)
    r, w = os.pipe2(os.O_CLOEXEC)
    try:
        with pytest.raises(client.Unanswered, match=f"the fork server \\(pid {server}\\) did not answer within"):
            client.launch(names, ["x"], env, w, w)
    finally:
        os.kill(server, signal.SIGKILL)
        os.close(r)
        os.close(w)


def test_stop_all_stops_a_server_that_is_still_starting(server_env, tmp_path):
    env, lib = server_env
    (lib / "fsslow.py").write_text("import time\ntime.sleep(30)\n")  # a preload that takes its time
    env = {**env, "MM_FORKSERVER_PRELOAD": "fsprobe,fsslow"}
    names = client.names_for(env, ENTRY)
    proc = subprocess.Popen(client.server_argv(names, ENTRY), env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 30
    while not (names.lock.exists() and names.lock.read_text().strip() == str(proc.pid)):
        assert time.monotonic() < deadline, "the server never took its lock"
        time.sleep(0.02)
    assert not names.sock.exists() and client.stop_all() == [proc.pid]
    assert proc.wait(timeout=30) == -signal.SIGTERM

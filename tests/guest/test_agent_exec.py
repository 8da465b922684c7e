"""The exec agent on a Unix socket: exit codes, env/cwd/user, PTY, stdin, big
output, concurrency, kill, disconnects, hostile input."""
from __future__ import annotations

import hashlib
import signal
import socket
import struct
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.guest.conftest import is_root, pid_alive, wait_gone
from vmm.guest.errors import AgentError, AgentProtocolError
from vmm.guest.protocol import HELLO, Frame, FrameReader, encode, records


@pytest.mark.parametrize("script,code,sig", [
    ("exit 0", 0, 0),
    ("exit 1", 1, 0),
    ("kill -KILL $$", 137, 9),
    ("kill -TERM $$", 143, 15),
])
def test_exit_codes_and_signals(agent, script, code, sig):
    r = agent.exec(["sh", "-c", script])
    assert (r.exit_code, r.signal) == (code, sig)


def test_stdout_and_stderr_are_separate(agent):
    r = agent.exec(["sh", "-c", "echo out; echo err >&2"])
    assert (r.stdout, r.stderr) == (b"out\n", b"err\n")


def test_missing_command_is_127(agent):
    r = agent.exec(["/no/such/program"])
    assert r.exit_code == 127 and b"No such file" in r.stderr


def test_env_and_cwd(agent, tmp_path):
    r = agent.exec(["sh", "-c", 'echo "$FOO|$PATH|$(pwd)"'], env={"FOO": "a b"}, cwd=str(tmp_path))
    assert r.stdout.decode().strip() == f"a b|/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin|{tmp_path}"


@pytest.mark.skipif(not is_root(), reason="switching user needs root")
def test_user_by_name_and_by_id(agent):
    assert agent.exec(["id", "-u"], user="nobody").stdout == b"65534\n"
    r = agent.exec(["sh", "-c", "id -u; id -g; echo $HOME"], user="4321:4322")
    assert r.stdout.split() == [b"4321", b"4322", b"/"]


def test_unknown_user_is_an_error(agent):
    with pytest.raises(AgentError, match="unable to find user"):
        agent.exec(["true"], user="no-such-user-here")


def test_stdin_streams_until_eof(agent):
    data = bytes(range(256)) * 4096  # 1 MiB
    r = agent.exec(["sh", "-c", "wc -c; echo done"], stdin=data)
    assert r.stdout.split() == [str(len(data)).encode(), b"done"]


def test_pty_and_resize(agent):
    r = agent.exec(["sh", "-c", "test -t 0 && test -t 1 && stty size && echo $TERM"], tty=True)
    assert r.exit_code == 0
    assert r.stdout.replace(b"\r", b"").split(b"\n")[:2] == [b"24 80", b"xterm"]
    with agent.start(["sh", "-c", "read x; stty size"], tty=True, rows=10, cols=20) as ex:
        ex.resize(50, 132)
        time.sleep(0.1)
        ex.write(b"go\n")
        out = b"".join(d for _, d in ex.output())
    assert b"50 132" in out and ex.exit_code == 0


def test_pty_stdin_eof(agent):
    r = agent.exec(["cat"], tty=True, stdin=b"hello\n")
    assert r.exit_code == 0 and b"hello" in r.stdout


def test_100mib_of_stdout_is_intact(agent):
    size = 100 << 20
    line = b"0123456789abcdef\n"
    want = hashlib.sha256((line * (size // len(line) + 1))[:size]).hexdigest()
    h, n = hashlib.sha256(), [0]

    def sink(data: bytes) -> None:
        h.update(data)
        n[0] += len(data)

    r = agent.exec(["sh", "-c", f"yes 0123456789abcdef | head -c {size}"], on_stdout=sink)
    assert r.exit_code == 0 and n[0] == size and h.hexdigest() == want


def test_50_concurrent_execs(agent):
    def one(i: int):
        return agent.exec(["sh", "-c", f"sleep 0.2; echo {i}; exit {i % 7}"])

    with ThreadPoolExecutor(50) as pool:
        results = list(pool.map(one, range(50)))
    for i, r in enumerate(results):
        assert (r.stdout, r.exit_code) == (f"{i}\n".encode(), i % 7)


def test_kill_through_the_stream(agent):
    with agent.start(["sleep", "60"]) as ex:
        ex.kill(signal.SIGKILL)
        assert ex.wait() == 137 and ex.signal == 9


def test_disconnect_leaves_no_orphan(agent):
    ex = agent.start(["sh", "-c", "sleep 300 & echo $!; wait"])
    kind, data = next(ex.output())
    child = int(data.split()[0])
    assert pid_alive(child) and pid_alive(ex.pid)
    ex.close()  # the host goes away mid-stream
    assert wait_gone(ex.pid) and wait_gone(child)


def test_background_job_does_not_outlive_its_exec(agent):
    r = agent.exec(["sh", "-c", "sleep 300 >/dev/null 2>&1 & echo $!"])
    assert r.exit_code == 0
    assert wait_gone(int(r.stdout))


def _raw(agent_proc) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(str(agent_proc.path))
    s.settimeout(5)
    return s


@pytest.mark.parametrize("garbage", [
    b"\xff" * 64,                                             # not a frame
    struct.pack("<B3xI", Frame.HELLO, 0xFFFFFFFF),            # absurd length
    encode(Frame.HELLO, b"mm-agent 99"),                      # wrong version
    encode(Frame.HELLO, HELLO) + encode(Frame.EXEC, b"arg=sh"),  # unterminated record
    encode(Frame.HELLO, HELLO) + encode(Frame.EXEC, records([("cwd", "/")])),  # no argv
    encode(Frame.HELLO, HELLO) + encode(0x7F, b""),           # unknown request
    encode(Frame.HELLO, HELLO) + encode(Frame.EXEC, records([("arg", "cat")]))
    + encode(Frame.SIGNAL, b"\x01"),                          # short SIGNAL payload
])
def test_hostile_input_is_refused_and_agent_survives(agent_proc, garbage):
    with _raw(agent_proc) as s:
        s.sendall(garbage)
        s.shutdown(socket.SHUT_WR)
        frames = []
        reader = FrameReader(s)
        try:
            while (f := reader.read()) is not None:
                frames.append(f)
        except (AgentError, OSError):
            pass
    assert not any(t == Frame.EXIT and p[:4] == b"\0\0\0\0" for t, p in frames)
    assert agent_proc.proc.poll() is None
    assert agent_proc.client.exec(["true"]).exit_code == 0


def test_wrong_version_is_reported(agent_proc):
    with _raw(agent_proc) as s:
        s.sendall(encode(Frame.HELLO, b"mm-agent 2"))
        t, payload = FrameReader(s).read()
    assert t == Frame.ERROR and b"version 2 not supported" in payload


def test_client_refuses_non_agent(tmp_path):
    from vmm.guest.agent_client import AgentClient

    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(tmp_path / "s"))
    srv.listen(1)
    import threading

    def answer():
        c, _ = srv.accept()
        c.recv(100)
        c.sendall(b"HTTP/1.0 400 Bad\r\n\r\n")
        c.close()

    threading.Thread(target=answer, daemon=True).start()
    with pytest.raises(AgentProtocolError):
        AgentClient(tmp_path / "s").exec(["true"])


def test_shutdown_stops_the_agent(agent_proc):
    agent_proc.client.shutdown()
    assert agent_proc.proc.wait(5) is not None


def test_random_frames_never_crash_the_agent(agent_proc):
    """Seeded garbage after a valid handshake and request: each connection's process
    may refuse it, but the agent keeps serving."""
    import random

    rng = random.Random(5)
    types = [int(t) for t in Frame] + [0, 0x7F, 0xFF]
    for i in range(150):
        body = b""
        for _ in range(rng.randint(1, 6)):
            payload = rng.randbytes(rng.choice([0, 1, 3, 4, 8, 100, 600]))
            body += encode(rng.choice(types), payload)
        req = rng.choice([records([("arg", "cat")]), records([("path", str(agent_proc.path.parent / "junk"))]), rng.randbytes(20)])
        kind = rng.choice([Frame.EXEC, Frame.COPY_IN, Frame.COPY_OUT])
        with _raw(agent_proc) as s:
            try:
                s.sendall(encode(Frame.HELLO, HELLO) + encode(kind, req) + body)
                s.shutdown(socket.SHUT_WR)
                while s.recv(65536):
                    pass
            except OSError:
                pass
    assert agent_proc.proc.poll() is None
    assert agent_proc.client.exec(["echo", "alive"]).stdout == b"alive\n"


def _ppid(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def test_killed_agent_session_is_reported_not_hung_on(agent):
    import os

    ex = agent.start(["sleep", "60"])
    os.kill(_ppid(ex.pid), signal.SIGKILL)  # the agent process serving this exec
    start = time.monotonic()
    with pytest.raises(AgentError, match="closed the stream"):
        ex.wait()
    assert time.monotonic() - start < 5
    ex.close()

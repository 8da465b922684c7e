"""The lab's exec agent, run on this host over a socket pair (real processes, no QEMU)."""
from __future__ import annotations

import json
import socket
import threading
import time

import pytest

from vmm.lab import agent as wire

TOKEN = "t0ken"


def _call(req: dict, agent: wire.Agent | None = None, close_after: float | None = None):
    agent = agent or wire.Agent(TOKEN)
    ours, theirs = socket.socketpair()
    t = threading.Thread(target=agent.handle, args=(theirs,), daemon=True)
    t.start()
    ours.sendall(json.dumps(req).encode() + b"\n")
    if close_after is not None:
        time.sleep(close_after)
        ours.close()
        t.join(10)
        return None
    out, err = b"", b""
    while True:
        kind, payload = wire.read_frame(ours)
        if kind == wire.STDOUT:
            out += payload
        elif kind == wire.STDERR:
            err += payload
        else:
            ours.close()
            t.join(10)
            return out, err, json.loads(payload)


def test_exec_streams_output_and_returns_the_exit_code(tmp_path):
    out, err, res = _call({
        "token": TOKEN, "op": "exec", "argv": ["sh", "-c", 'echo "$GREETING"; pwd; echo oops >&2; exit 7'],
        "env": {"GREETING": "hi"}, "cwd": str(tmp_path),
    })
    assert out == f"hi\n{tmp_path}\n".encode()
    assert err == b"oops\n"
    assert res == {"rc": 7, "timed_out": False}


def test_a_signal_death_is_128_plus_the_signal():
    _, _, res = _call({"token": TOKEN, "op": "exec", "argv": ["sh", "-c", "kill -9 $$"]})
    assert res["rc"] == 137


def test_timeout_kills_the_whole_process_group(tmp_path):
    marker = tmp_path / "child-survived"
    start = time.monotonic()
    _, _, res = _call({
        "token": TOKEN, "op": "exec", "timeout": 0.5,
        "argv": ["sh", "-c", f"(sleep 2; touch {marker}) & sleep 30"],
    })
    assert res == {"rc": 137, "timed_out": True}
    assert time.monotonic() - start < 10
    time.sleep(2.5)
    assert not marker.exists()


def test_client_hang_up_kills_the_command(tmp_path):
    pidfile = tmp_path / "pid"
    _call({"token": TOKEN, "op": "exec", "argv": ["sh", "-c", f"echo $$ > {pidfile}; exec sleep 30"]}, close_after=1.0)
    pid = int(pidfile.read_text())
    for _ in range(50):
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    break
        except FileNotFoundError:
            break
        time.sleep(0.1)
    else:
        pytest.fail("the command outlived its client")


@pytest.mark.parametrize("argv, rc", [(["/no/such/program"], 127), (["/etc/hostname"], 126)])
def test_unrunnable_commands_follow_shell_conventions(argv, rc):
    _, err, res = _call({"token": TOKEN, "op": "exec", "argv": argv})
    assert res["rc"] == rc and b"mm lab: cannot run" in err


@pytest.mark.parametrize("req, error", [
    ({"token": "wrong", "op": "ping"}, "bad token"),
    ({"op": "ping"}, "bad token"),
    ({"token": TOKEN, "op": "format-disk"}, "unknown op"),
    ({"token": TOKEN, "op": "exec", "argv": "ls -l"}, "argv must be"),
    ({"token": TOKEN, "op": "exec", "argv": []}, "argv must be"),
    ({"token": TOKEN, "op": "exec", "argv": ["true"], "cwd": "/no/such/dir"}, "does not exist in the lab"),
])
def test_bad_requests_get_an_error(req, error):
    _, _, res = _call(req)
    assert error in res["error"]


def test_ping_reports_uptime():
    _, _, res = _call({"token": TOKEN, "op": "ping"})
    assert res["rc"] == 0 and res["uptime"] > 0


def test_frames_round_trip():
    a, b = socket.socketpair()
    with a, b:
        a.sendall(wire.frame(wire.STDOUT, b"x" * 100000) + wire.frame(wire.RESULT, b"{}"))
        assert wire.read_frame(b) == (wire.STDOUT, b"x" * 100000)
        assert wire.read_frame(b) == (wire.RESULT, b"{}")
        a.close()
        with pytest.raises(ConnectionError):
            wire.read_frame(b)

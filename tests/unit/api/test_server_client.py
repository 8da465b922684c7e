"""Server and client over a real Unix socket and the worker's real event loop.

The handler here is a recording double of the worker service: these tests are about
framing, deferral, upgrades and fd passing, and make no claim about any guest.
"""
from __future__ import annotations

import socket
import threading

import pytest

from vmm.api.client import WorkerClient
from vmm.api.errors import BadArgument, ProtocolError, WorkerUnreachable, WrongState
from vmm.api.server import DEFERRED, ApiServer
from vmm.worker.loop import Loop


class Recorder:
    def __init__(self, loop):
        self.loop = loop
        self.calls = []
        self.typed = []

    def handle(self, req, conn):
        self.calls.append((req.op, req.args))
        if req.op == "status":
            return {"state": "running"}
        if req.op == "pause":
            raise WrongState("the machine is exited", "start it")
        if req.op == "kill":
            raise BadArgument("bad signal")
        if req.op == "wait":
            self.loop.call_later(0.05, lambda: conn.reply(req.id, {"exit_code": 3}))
            return DEFERRED
        if req.op == "console":
            conn.upgrade(req.id, {}, lambda data: (self.typed.append(data), conn.send_raw(data.upper())))
            conn.send_raw(b"hello\n")
            return DEFERRED
        if req.op == "exec":
            a, b = socket.socketpair()
            b.sendall(b"from the other end")
            conn.send_fd(req.id, {"port": req.args["port"]}, a.fileno())
            a.close()
            self.keep = b
            return DEFERRED
        raise KeyError(req.op)


@pytest.fixture
def served(tmp_path):
    loop = Loop()
    handler = Recorder(loop)
    server = ApiServer(loop, tmp_path / "api.sock", handler)
    t = threading.Thread(target=loop.run, daemon=True)
    t.start()
    yield WorkerClient(tmp_path / "api.sock", timeout=5), handler, server
    loop.call_soon_threadsafe(loop.stop)
    t.join(5)
    server.close()
    loop.close()


def test_status(served):
    client, handler, _ = served
    assert client.status() == {"state": "running"}
    assert handler.calls == [("status", {})]


def test_socket_is_private(served):
    import os
    import stat

    _, _, server = served
    assert stat.S_IMODE(os.stat(server.path).st_mode) == 0o600


def test_errors_are_typed(served):
    client, _, _ = served
    with pytest.raises(WrongState) as err:
        client.pause()
    assert err.value.hint == "start it"
    with pytest.raises(BadArgument):
        client.kill("BOGUS")


def test_unexpected_handler_failure_keeps_serving(served):
    client, _, _ = served
    with pytest.raises(Exception) as err:
        client.resume()
    assert "KeyError" in str(err.value)
    assert client.status() == {"state": "running"}


def test_deferred_reply(served):
    client, _, _ = served
    assert client.wait() == {"exit_code": 3}


def test_pipelined_requests_answered_in_order(served):
    _, _, server = served
    s = socket.socket(socket.AF_UNIX)
    s.connect(str(server.path))
    s.sendall(b'{"v":1,"id":1,"op":"wait"}\n{"v":1,"id":2,"op":"status"}\n')
    data = b""
    while data.count(b"\n") < 2:
        data += s.recv(4096)
    first, second = data.splitlines()
    assert b'"id":1' in first and b"exit_code" in first
    assert b'"id":2' in second and b"running" in second
    s.close()


def test_garbage_then_good_request(served):
    _, _, server = served
    s = socket.socket(socket.AF_UNIX)
    s.connect(str(server.path))
    s.sendall(b"garbage\n" + b'{"v":1,"id":9,"op":"status"}\n')
    data = b""
    while data.count(b"\n") < 2:
        data += s.recv(4096)
    bad, good = data.splitlines()
    assert b"ProtocolError" in bad and b'"ok":true' in good
    s.close()


def test_console_upgrade_streams_both_ways(served):
    client, handler, _ = served
    sock = client.console()
    sock.settimeout(5)
    assert sock.recv(6) == b"hello\n"
    sock.sendall(b"abc")
    assert sock.recv(3) == b"ABC"
    assert handler.typed == [b"abc"]
    sock.close()


def test_exec_hands_over_a_connected_stream(served):
    client, _, _ = served
    stream = client.exec(1024)
    stream.settimeout(5)
    assert stream.recv(100) == b"from the other end"
    stream.close()


def test_unreachable_worker(tmp_path):
    with pytest.raises(WorkerUnreachable) as err:
        WorkerClient(tmp_path / "nothing.sock").status()
    assert err.value.hint


def test_stale_socket_file_replaced(tmp_path):
    path = tmp_path / "api.sock"
    old = socket.socket(socket.AF_UNIX)
    old.bind(str(path))
    old.close()  # a socket file left by a dead worker
    loop = Loop()
    server = ApiServer(loop, path, Recorder(loop))
    server.close()
    loop.close()
    assert not path.exists()

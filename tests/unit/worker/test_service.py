"""WorkerService against a recording VM double (no guest runs here: these tests are
about the service's bookkeeping — console replay, state checks, exit recording)."""
from __future__ import annotations

import threading
import time

import pytest

from vmm.api.client import WorkerClient
from vmm.api.errors import BadArgument, WrongState
from vmm.api.server import ApiServer
from vmm.machines import State
from vmm.machines.db import open_machines
from vmm.worker.loop import Loop
from vmm.worker.service import WorkerService
from vmm.worker.spec import WorkerSpec
from vmm.worker.vm import ExitState


class RecordingVM:
    """Records calls; `end()` makes wait() return, as a VM ending would."""

    vsock_socket = None

    def __init__(self):
        self.calls, self.typed = [], []
        self._ended = threading.Event()
        self.state = None

    def start(self): self.calls.append("start")
    def pause(self): self.calls.append("pause")
    def resume(self): self.calls.append("resume")
    def request_shutdown(self): self.calls.append("shutdown"); self.end(ExitState("poweroff", 5))
    def kill(self): self.calls.append("kill"); self.end(ExitState("killed"))
    def write_console(self, data): self.typed.append(data)
    def stats(self): return {"vcpus": 1}
    def close(self): pass

    def end(self, state):
        self.state = state
        self._ended.set()

    def wait(self, timeout=None):
        return self.state if self._ended.wait(timeout) else None


@pytest.fixture
def worker(tmp_path):
    machines = open_machines(tmp_path)
    rec = machines.begin_start(machines.create("img", name="w").id)
    spec = WorkerSpec(machine_id=rec.id, generation=rec.generation, state_dir=str(tmp_path), factory="x:y", machine={})
    loop = Loop()
    log = tmp_path / "console.log"
    log.write_bytes(b"previous start\n")
    service = WorkerService(loop, spec, machines, log)
    vm = RecordingVM()
    server = ApiServer(loop, tmp_path / "api.sock", service)
    service.attach(vm)
    t = threading.Thread(target=loop.run, daemon=True)
    t.start()
    yield service, vm, WorkerClient(tmp_path / "api.sock", timeout=5), machines, rec
    loop.call_soon_threadsafe(loop.stop)
    t.join(5)
    server.close()


def _recv_until(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def test_console_replay_then_live_without_gap_or_repeat(worker):
    service, vm, client, _, _ = worker
    base = len(b"previous start\n")
    service.console_sink(b"abc")
    sock = client.console(offset=base)
    sock.settimeout(5)
    feeder = threading.Thread(target=lambda: [service.console_sink(bytes([65 + i % 26])) for i in range(300)])
    feeder.start()
    feeder.join()
    got = _recv_until(sock, 303)
    assert got == b"abc" + bytes(65 + i % 26 for i in range(300))
    sock.sendall(b"typed")
    deadline = time.monotonic() + 5
    while not vm.typed and time.monotonic() < deadline:
        time.sleep(0.01)
    assert vm.typed == [b"typed"]
    sock.close()


def test_console_without_offset_is_live_only(worker):
    service, _, client, _, _ = worker
    service.console_sink(b"old")
    sock = client.console()
    sock.settimeout(5)
    service.console_sink(b"new")
    assert _recv_until(sock, 3) == b"new"
    sock.close()


def test_bad_arguments(worker):
    _, _, client, _, _ = worker
    with pytest.raises(BadArgument):
        client.call("console", offset=-1)
    with pytest.raises(BadArgument):
        client.call("stop", timeout="soon")
    with pytest.raises(BadArgument):
        client.kill("USR1")
    with pytest.raises(WrongState):
        client.resume()


def test_pause_resume_and_stop_recorded(worker):
    service, vm, client, machines, rec = worker
    assert machines.get(rec.id).state is State.RUNNING
    client.pause()
    assert machines.get(rec.id).state is State.PAUSED
    result = client.stop(timeout=5)
    assert result == {"exit_code": 5, "reason": "poweroff", "detail": ""}
    assert vm.calls == ["start", "pause", "resume", "shutdown"]
    done = machines.get(rec.id)
    assert (done.state, done.exit_code, done.exit_reason) == (State.EXITED, 5, "poweroff")
    assert client.wait()["exit_code"] == 5


def test_stop_asks_the_agent_over_vsock(tmp_path):
    """With an agent port in the spec, stop speaks the agent protocol (vmm.guest) through
    the VM's vsock socket. The far end is a protocol double on a host socket."""
    import socket

    from vmm.guest.protocol import HELLO, Frame, encode

    uds = tmp_path / "vsock.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(uds))
    listener.listen(1)
    seen = []
    vm = RecordingVM()
    vm.vsock_socket = str(uds)

    def agent():
        conn, _ = listener.accept()
        line = b""
        while not line.endswith(b"\n"):
            line += conn.recv(1)
        seen.append(line)
        conn.sendall(b"OK 1073741824\n")
        data = b""
        while len(data) < 8 + len(HELLO) + 8:
            data += conn.recv(4096)
        seen.append(data[8 + len(HELLO)])  # the request frame's type
        conn.sendall(encode(Frame.HELLO, HELLO) + encode(Frame.OK))
        conn.close()
        vm.end(ExitState("poweroff", 0))

    threading.Thread(target=agent, daemon=True).start()
    machines = open_machines(tmp_path)
    rec = machines.begin_start(machines.create("img").id)
    spec = WorkerSpec(machine_id=rec.id, generation=rec.generation, state_dir=str(tmp_path), factory="x:y",
                      machine={}, agent_port=1024)
    loop = Loop()
    service = WorkerService(loop, spec, machines, tmp_path / "console.log")
    server = ApiServer(loop, tmp_path / "api.sock", service)
    service.attach(vm)
    t = threading.Thread(target=loop.run, daemon=True)
    t.start()
    try:
        assert WorkerClient(tmp_path / "api.sock").stop(timeout=5)["reason"] == "poweroff"
    finally:
        loop.call_soon_threadsafe(loop.stop)
        t.join(5)
        server.close()
    assert seen == [b"CONNECT 1024\n", Frame.SHUTDOWN]
    assert "shutdown" not in vm.calls and "kill" not in vm.calls

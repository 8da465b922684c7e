"""How `mm exec` reaches a guest agent (vmm.machines.exec.VsockConnector): through the
VM's vsock host socket, waiting while a booting guest refuses the port, giving up with a
clear error, and noticing a machine that stopped meanwhile. The socket's far side is a
stand-in for the worker's vsock device (Firecracker's `CONNECT`/`OK` preamble): no VM."""
from __future__ import annotations

import socket
import threading

import pytest

from vmm.machines import State
from vmm.machines.db import open_control
from vmm.machines.exec import AgentUnavailable, NoAgent, NotRunning, VsockConnector, agent_endpoint, running
from vmm.machines.liveness import self_identity


class FakeMuxer(threading.Thread):
    """Refuses the first `refusals` CONNECTs (closes, as the device does when the guest
    resets the port), then answers OK and echoes."""

    def __init__(self, path, refusals: int) -> None:
        super().__init__(daemon=True)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(16)
        self.refusals, self.requests = refusals, []

    def run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            line = b""
            while not line.endswith(b"\n"):
                chunk = conn.recv(1)
                if not chunk:
                    break
                line += chunk
            self.requests.append(line)
            if self.refusals > 0:
                self.refusals -= 1
                conn.close()
                continue
            conn.sendall(b"OK 1073741824\n")
            threading.Thread(target=lambda c=conn: [c.sendall(d) for d in iter(lambda: c.recv(100), b"")],
                             daemon=True).start()


@pytest.fixture
def control(tmp_path):
    return open_control(tmp_path / "state")


def _running(control, tmp_path, name="vm1"):
    uds = tmp_path / f"{name}.vsock"
    m = control.machines
    worker = {"factory": "x:y", "agent_port": 1024, "machine": {"vsock": f"3:{uds}"}}
    rec = m.begin_start(m.create("busybox", name=name, config={"worker": worker}).id)
    m.set_worker(rec.id, rec.generation, *self_identity())
    return m.transition(rec.id, State.RUNNING), uds


def test_endpoint_from_the_worker_config(control, tmp_path):
    rec, uds = _running(control, tmp_path)
    assert agent_endpoint(rec) == (str(uds), 1024)
    plain = control.machines.create("busybox", name="plain", config={"worker": {"machine": {}}})
    with pytest.raises(NoAgent, match="plain has no guest agent"):
        agent_endpoint(plain)


def test_waits_for_a_booting_agent(control, tmp_path):
    rec, uds = _running(control, tmp_path)
    mux = FakeMuxer(uds, refusals=3)
    mux.start()
    sock = VsockConnector(control, rec, wait=30)()
    sock.sendall(b"ping")
    assert sock.recv(4) == b"ping"
    assert mux.requests == [b"CONNECT 1024\n"] * 4
    sock.close()


def test_gives_up_with_a_clear_error(control, tmp_path):
    rec, uds = _running(control, tmp_path)
    FakeMuxer(uds, refusals=10**6).start()
    with pytest.raises(AgentUnavailable, match="the guest agent of vm1 does not answer within 1 s") as err:
        VsockConnector(control, rec, wait=1)()
    assert "mm logs vm1" in err.value.hint


def test_after_the_first_answer_refusals_are_retried_briefly(control, tmp_path, monkeypatch):
    from vmm.machines import exec as machine_exec

    monkeypatch.setattr(machine_exec, "AGENT_MIN_WAIT_S", 1.0)
    rec, uds = _running(control, tmp_path)
    mux = FakeMuxer(uds, refusals=0)
    mux.start()
    connect = VsockConnector(control, rec, wait=600)
    connect().close()
    mux.refusals = 2  # e.g. the guest was too slow to answer two connects
    connect().close()
    mux.refusals = 10**6
    with pytest.raises(AgentUnavailable, match="does not answer within 1 s"):
        connect()


def test_a_machine_that_stops_while_waiting(control, tmp_path):
    rec, uds = _running(control, tmp_path)
    mux = FakeMuxer(uds, refusals=10**6)
    mux.start()
    control.machines.transition(rec.id, State.EXITED, exit_code=0, exit_reason="poweroff")
    with pytest.raises(NotRunning, match="vm1 is not running: it is exited"):
        VsockConnector(control, rec, wait=600)()


def test_default_wait_counts_from_the_machine_start(control, tmp_path):
    from vmm.machines import exec as machine_exec

    rec, _ = _running(control, tmp_path)
    fresh = VsockConnector(control, rec)
    assert machine_exec.AGENT_BOOT_WAIT_S - 5 < fresh.wait <= machine_exec.AGENT_BOOT_WAIT_S
    control.machines.conn.execute("UPDATE machines SET started_at = started_at - 3600 WHERE id = ?", (rec.id,))
    old = VsockConnector(control, running(control, rec.id))
    assert old.wait == machine_exec.AGENT_MIN_WAIT_S

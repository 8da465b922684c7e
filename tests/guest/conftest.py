"""Host-side guest tests: the real mm-init binary, run on this host (no VM).

`agent` starts `mm-init agent --unix PATH` (the same C code that serves vsock in a
guest) and yields an AgentClient connected to it.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from vmm.guest.agent_client import AgentClient


@pytest.fixture(scope="session")
def mm_init() -> Path:
    if not shutil.which("musl-gcc"):
        pytest.skip("musl-gcc (musl-tools) is needed to build mm-init")
    from vmm.guest.initramfs import mm_init_binary

    return mm_init_binary()


def listening(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(str(path))
            return True
        except OSError:
            return False


class Agent:
    def __init__(self, binary: Path, path: Path) -> None:
        self.path = path
        self.proc = subprocess.Popen([str(binary), "agent", "--unix", str(path)])
        deadline = time.monotonic() + 5
        while not listening(path):  # bind() creates the file before listen()
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("mm-init agent did not start listening")
            time.sleep(0.01)
        self.client = AgentClient(path)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(5)


@pytest.fixture
def agent_proc(mm_init, tmp_path):
    a = Agent(mm_init, tmp_path / "agent.sock")
    yield a
    a.stop()


@pytest.fixture
def agent(agent_proc) -> AgentClient:
    return agent_proc.client


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, ProcessLookupError):  # gone before or while we read
        return False


def wait_gone(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.02)
    return False


def is_root() -> bool:
    return os.geteuid() == 0

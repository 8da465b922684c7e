"""The exec agent measured on this host: mm-init's agent on a Unix socket (the same C
code that serves vsock in a guest), driven by vmm.guest.agent_client.

* `test_exec_true_round_trip`: connect, HELLO, EXEC `true`, STARTED, EXIT — the floor
  an `mm exec` adds before any vsock/VMM cost.
* `test_exec_stdout_throughput`: 64 MiB of stdout from `head -c` through the framed
  stream into the client (MB/s in extra_info).
* `test_copy_in_out_throughput`: a 32 MiB file through copy_in then copy_out.
Run:
    .venv/bin/python -m pytest benchmarks/guest --benchmark-only -p no:cacheprovider
Figures go to benchmarks/results/agent-<UTC time>.md/.json (benchmarks/guest/conftest.py).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest

from vmm.guest.agent_client import AgentClient

ROUNDS = 15  # of the throughput runs (the round trip takes as many as pytest-benchmark fits)


def _listening(path) -> bool:
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        return s.connect_ex(str(path)) == 0


@pytest.fixture(scope="module")
def agent(tmp_path_factory):
    if not shutil.which("musl-gcc"):
        pytest.skip("musl-gcc (musl-tools) is needed to build mm-init")
    from vmm.guest.initramfs import mm_init_binary

    sock = tmp_path_factory.mktemp("agent") / "agent.sock"
    proc = subprocess.Popen([str(mm_init_binary()), "agent", "--unix", str(sock)])
    while not _listening(sock):
        time.sleep(0.01)
    yield AgentClient(sock)
    proc.terminate()
    proc.wait(5)


def test_exec_true_round_trip(benchmark, agent, record):
    result = benchmark(lambda: agent.exec(["/bin/true"]))
    assert result.exit_code == 0
    record(benchmark, "exec `true`: connect, HELLO, EXEC to EXIT")


def test_exec_stdout_throughput(benchmark, agent, record):
    size = 64 << 20
    got = [0]

    def sink(data: bytes) -> None:
        got[0] += len(data)

    def run():
        got[0] = 0
        agent.exec(["head", "-c", str(size), "/dev/zero"], on_stdout=sink)

    benchmark.pedantic(run, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    assert got[0] == size
    benchmark.extra_info["MB/s"] = round(size / benchmark.stats.stats.mean / 1e6, 1)
    record(benchmark, "exec stdout, 64 MiB of `head -c`", bytes_per_round=size)


def test_copy_in_out_throughput(benchmark, agent, tmp_path, record):
    src = tmp_path / "f.bin"
    src.write_bytes(os.urandom(32 << 20))

    def run():
        shutil.rmtree(tmp_path / "g", ignore_errors=True)
        shutil.rmtree(tmp_path / "b", ignore_errors=True)
        agent.copy_in(src, str(tmp_path / "g"))
        agent.copy_out(str(tmp_path / "g" / "f.bin"), tmp_path / "b")

    benchmark.pedantic(run, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    benchmark.extra_info["MB/s (in+out)"] = round(2 * (32 << 20) / benchmark.stats.stats.mean / 1e6, 1)
    record(benchmark, "copy 32 MiB in then out (tar streams; MB/s of both)", bytes_per_round=2 * (32 << 20))

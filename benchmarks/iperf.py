"""iperf3 as every benchmark runs it: one TCP client run against a server that may still
be starting, its JSON report read for the receiver's throughput.

    binary = iperf3_path()                       # the host's iperf3, or exit saying how to get it
    mbps = tcp_mbps("10.0.9.2", seconds=8)       # host -> server
    mbps = tcp_mbps(ip, 8, reverse=True, prefix=["ip", "netns", "exec", NS], error=BenchError)

The figure is `end.sum_received.bits_per_second` in Mbit/s: what the receiving side got,
which is the guest with -c and the host with -R. A run that fails (the server is not
listening yet, the connection is refused) is retried `attempts` times a second apart;
after that the benchmark's own error type (`error`) says what iperf3 said last.
Used by benchmarks/jail/throughput.py, benchmarks/network/bridge_iperf.py and
benchmarks/virtio/suites.py.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence


class IperfError(RuntimeError):
    """iperf3 did not produce a throughput figure; says what it said."""


def iperf3_path() -> str:
    """The host's iperf3 binary; a benchmark cannot run without it."""
    return shutil.which("iperf3") or sys.exit("iperf3 is missing: apt-get install iperf3 (setup.sh lists it)")


def client_argv(address: str, seconds: int, reverse: bool = False, iperf3: str | None = None,
                prefix: Sequence[str] = ()) -> list[str]:
    """A TCP client run of `seconds` with a JSON report (-R: the server sends)."""
    return [*prefix, iperf3 or iperf3_path(), "-c", address, "-t", str(seconds), "-J", *(["-R"] if reverse else [])]


def received_mbps(stdout: str, stderr: str = "") -> float:
    """The receiver's Mbit/s from a -J report; IperfError with iperf3's own error otherwise
    (it reports failures inside the JSON, or on stderr when it never got that far)."""
    try:
        report = json.loads(stdout)
    except json.JSONDecodeError:
        raise IperfError(stderr.strip() or stdout[-300:] or "no output") from None
    if "error" in report:
        raise IperfError(report["error"])
    try:
        return report["end"]["sum_received"]["bits_per_second"] / 1e6
    except (KeyError, TypeError):
        raise IperfError(f"no end.sum_received in the report: {stdout[-300:]}") from None


def tcp_mbps(address: str, seconds: int, reverse: bool = False, *, iperf3: str | None = None,
             prefix: Sequence[str] = (), attempts: int = 5, error: type[Exception] = IperfError,
             what: str = "") -> float:
    """One TCP run's receiver throughput in Mbit/s, retried while the server starts."""
    argv = client_argv(address, seconds, reverse, iperf3, prefix)
    last = ""
    for attempt in range(attempts):
        if attempt:
            time.sleep(1)
        res = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 120)
        try:
            return received_mbps(res.stdout, res.stderr)
        except IperfError as exc:
            last = str(exc)
    where = f"{what}: " if what else ""
    raise error(f"{where}iperf3 {'-R ' if reverse else ''}to {address} failed {attempts} times: {last}")

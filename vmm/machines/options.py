"""`mm run`'s options with Docker's meaning, parsed and checked before anything is created.

`RunOptions` is plain data (it is stored in the machine record and will be what a
compose-like topology file produces). Every parser raises `UsageError` with a hint, so
bad input is refused before a record, disk or network attachment exists.
"""
from __future__ import annotations

import math
import os
import re
from pathlib import Path

from vmm.errors import UsageError
from vmm.plain import REQUIRED, Frozen

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~40 ms of `mm run` start-up in the lab (tests/unit/cli/test_run_imports.py)
    from typing import Any

_SIZE_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*([bkmgt]?)i?b?$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MIN_MEMORY = 32 * 1024**2
MAX_VCPUS = 255  # x86 xAPIC ids without x2APIC
MAX_CPU_NUMBER = 8191  # the kernel's NR_CPUS ceiling: refuses "0-4000000000" before a set is built
MIN_CPU_LIMIT = 0.01  # the jail's smallest CFS quota: 1 ms per 100 ms (vmm.jail.config.MIN_CPUS)


# A vmm.plain.Frozen record, not a dataclass: `mm run`'s path imports no dataclasses (and so
# no inspect, ast, dis, tokenize), a second of start-up under the lab's emulation.
class Publish(Frozen):
    """One -p rule; host_port 0 means any free port."""

    FIELDS = {"host_ip": REQUIRED, "host_port": REQUIRED, "guest_port": REQUIRED, "proto": "tcp"}  # str, int, int, str


class RunOptions(Frozen):
    """`mm run`'s options (Docker's names and meaning), by field name:"""

    FIELDS = {
        "image": REQUIRED,  # str
        "cmd": [],  # list[str]
        "name": None,  # str | None
        "detach": False,  # bool
        "auto_remove": False,  # bool
        "env": {},  # dict[str, str]
        "publish": [],  # list[Publish]
        "vcpus": 1,  # int
        "memory_mib": 256,  # int
        "disk_size_mib": 1024,  # int
        "entrypoint": None,  # list[str] | None
        "workdir": None,  # str | None
        "user": None,  # str | None
        "interactive": False,  # bool
        "tty": False,  # bool
        "network": None,  # str | None
        "labels": {},  # dict[str, str]
        "ssh": False,  # bool
        "kernel": None,  # str | None
        "no_jail": False,  # bool; debugging only: the worker runs unconfined (with a warning)
        "cpu_quota": None,  # float | None; the VMM's CPU-time limit in CPUs (--cpu-limit, or a fractional --cpus); None: none
        "pids_limit": None,  # int | None; --pids-limit: most threads of the VMM (None: vCPUs + 64)
        "cpuset": None,  # list[int] | None; --cpuset-cpus: the host CPUs the VMM's threads may run on
    }

    def to_dict(self) -> dict[str, Any]:
        out = self.asdict()
        out["publish"] = [p.asdict() for p in self.publish]
        return {k: (list(v) if isinstance(v, list) else dict(v) if isinstance(v, dict) else v) for k, v in out.items()}


def parse_size(text: str, what: str) -> int:
    """Docker's sizes: a number with an optional b/k/m/g/t unit; no unit means bytes."""
    m = _SIZE_RE.match(text.strip())
    if not m:
        raise UsageError(f"invalid {what} {text!r}", "use a number with a unit, e.g. 512m or 2g")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def parse_memory(text: str, host_total: int | None = None) -> int:
    """--memory → MiB, at least 32 MiB and no more than the host has."""
    size = parse_size(text, "--memory")
    if size < MIN_MEMORY:
        hint = f"did you mean {text}m?" if text.strip().isdigit() else "give at least 32m"
        raise UsageError(f"--memory {text} is less than the 32 MiB a guest needs", hint)
    total = host_total if host_total is not None else host_memory()
    if size > total:
        raise UsageError(f"--memory {text} is more than this host has ({total // 1024**2} MiB)",
                         "ask for less memory")
    return math.ceil(size / 1024**2)


def parse_disk_size(text: str) -> int:
    size = parse_size(text, "--disk-size")
    if size < 1024**2:
        raise UsageError(f"--disk-size {text} is less than 1 MiB", "give e.g. 1g")
    return math.ceil(size / 1024**2)


def parse_cpus(text: str) -> int:
    """--cpus is a CPU count that may be fractional in Docker; a VM gets whole vCPUs (rounded up)."""
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"invalid --cpus {text!r}", "give a number, e.g. --cpus 2") from None
    if not 0 < value <= MAX_VCPUS or math.isnan(value):
        raise UsageError(f"--cpus {text} is out of range", f"give a number in (0, {MAX_VCPUS}]")
    return math.ceil(value)


def parse_cpu_quota(cpus: str, limit: str | None = None, host_cpus: int | None = None) -> float | None:
    """The VMM's CPU-time limit in CPUs (the jail's cgroup quota over its vCPU and I/O
    threads), or None for none (vmm.jail.config, "CPU time"). `--cpu-limit` gives it;
    without, a fractional --cpus does (Docker's meaning of --cpus 0.5: half a CPU),
    and a whole --cpus N sets none, since N vCPUs already bound the guest to N CPUs."""
    vcpus = parse_cpus(cpus)
    if limit is None:
        value = float(cpus)
        if value < MIN_CPU_LIMIT:
            raise UsageError(f"--cpus {cpus} is less CPU time than a VM can run on", f"give at least {MIN_CPU_LIMIT}")
        return None if value == vcpus else value
    try:
        value = float(limit)
    except ValueError:
        raise UsageError(f"invalid --cpu-limit {limit!r}", "give CPUs as a number, e.g. --cpu-limit 1.5") from None
    total = host_cpus if host_cpus is not None else os.cpu_count() or 1
    if math.isnan(value) or not MIN_CPU_LIMIT <= value <= total:
        # Docker's check on --cpus: more CPU time than the host has is no limit at all
        raise UsageError(f"--cpu-limit {limit} is out of range",
                         f"give {MIN_CPU_LIMIT} to {total} (this host's CPUs), or leave it out for no limit")
    return value


def parse_pids_limit(text: str | None) -> int | None:
    """--pids-limit: the VMM's thread limit; it needs a few threads beside its vCPUs."""
    if text is None:
        return None
    try:
        value = int(text)
    except ValueError:
        raise UsageError(f"invalid --pids-limit {text!r}", "give a whole number, e.g. --pids-limit 100") from None
    if value < 8:
        raise UsageError(f"--pids-limit {text} is too low for the VMM", "give at least 8 (vCPUs + 64 by default)")
    return value


def parse_cpuset(text: str | None, available: set[int] | None = None) -> list[int] | None:
    """--cpuset-cpus in Docker's syntax ("0-3", "1,3", "0-1,4"): the sorted CPUs, each one
    this process may run on (`available`, default its own affinity)."""
    if text is None:
        return None
    cpus: set[int] = set()
    for part in text.split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not m or (m.group(2) is not None and int(m.group(2)) < int(m.group(1))):
            raise UsageError(f"invalid --cpuset-cpus {text!r}", "list CPUs and ranges, e.g. 0-3 or 1,3")
        first, last = int(m.group(1)), int(m.group(2) or m.group(1))
        if last > MAX_CPU_NUMBER:
            raise UsageError(f"--cpuset-cpus {text}: CPU {last} is beyond any host", f"CPU numbers go up to {MAX_CPU_NUMBER}")
        cpus.update(range(first, last + 1))
    have = available if available is not None else os.sched_getaffinity(0)
    missing = sorted(cpus - have)
    if missing:
        raise UsageError(f"--cpuset-cpus {text}: CPU{'s' if len(missing) > 1 else ''} {format_cpuset(missing)} "
                         f"{'are' if len(missing) > 1 else 'is'} not available here",
                         f"this host offers CPUs {format_cpuset(sorted(have))}")
    return sorted(cpus)


def format_cpuset(cpus: list[int]) -> str:
    """[0, 1, 2, 5] -> "0-2,5" (Docker's and the kernel's list syntax)."""
    runs: list[list[int]] = []  # [first, last] of each run of consecutive CPUs
    for cpu in cpus:
        if runs and runs[-1][1] == cpu - 1:
            runs[-1][1] = cpu
        else:
            runs.append([cpu, cpu])
    return ",".join(str(first) if first == last else f"{first}-{last}" for first, last in runs)


def host_memory() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    raise UsageError("cannot read the host's memory size from /proc/meminfo")


def _env_item(item: str, source: str, host_env: dict[str, str]) -> tuple[str, str] | None:
    key, sep, value = item.partition("=")
    if not _ENV_KEY.match(key):
        raise UsageError(f"invalid environment variable {item!r} in {source}", "use KEY=VALUE")
    if not sep:  # Docker: `-e KEY` passes the host's value, or nothing when it is unset
        return (key, host_env[key]) if key in host_env else None
    return key, value


def parse_env(items: list[str], env_files: list[str], host_env: dict[str, str] | None = None) -> dict[str, str]:
    """--env-file entries first, then -e (later wins), as Docker orders them."""
    host_env = dict(os.environ) if host_env is None else host_env
    env: dict[str, str] = {}
    for path in env_files:
        try:
            lines = Path(path).read_text().splitlines()
        except OSError as exc:
            raise UsageError(f"cannot read --env-file {path}: {exc.strerror}") from None
        for line in lines:
            line = line.strip()
            if line and not line.startswith("#"):
                pair = _env_item(line, path, host_env)
                if pair:
                    env[pair[0]] = pair[1]
    for item in items:
        pair = _env_item(item, "-e", host_env)
        if pair:
            env[pair[0]] = pair[1]
    return env


def _port(text: str, spec: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise UsageError(f"invalid port {text!r} in -p {spec}", "ports are 1-65535")
    return int(text)


def parse_publish(spec: str) -> Publish:
    """-p [ip:][host_port:]guest_port[/tcp|udp] (Docker's form; no ranges)."""
    body, _, proto = spec.partition("/")
    proto = proto or "tcp"
    if proto not in ("tcp", "udp"):
        raise UsageError(f"invalid protocol {proto!r} in -p {spec}", "use tcp or udp")
    parts = body.rsplit(":", 2)
    if len(parts) == 1:  # Docker: `-p 80` publishes guest port 80 on a free host port
        return Publish("0.0.0.0", 0, _port(parts[0], spec), proto)
    if len(parts) == 2:
        return Publish("0.0.0.0", _port(parts[0], spec), _port(parts[1], spec), proto)
    ip = parts[0].strip("[]") or "0.0.0.0"
    import ipaddress

    try:
        ipaddress.ip_address(ip)
    except ValueError:
        raise UsageError(f"invalid host address {ip!r} in -p {spec}") from None
    host = _port(parts[1], spec) if parts[1] else 0  # Docker: ip::port picks a free host port
    return Publish(ip, host, _port(parts[2], spec), proto)


def parse_labels(items: list[str]) -> dict[str, str]:
    labels = {}
    for item in items:
        key, _, value = item.partition("=")
        if not key:
            raise UsageError(f"invalid --label {item!r}", "use KEY=VALUE")
        labels[key] = value
    return labels


def parse_workdir(text: str | None) -> str | None:
    if text is not None and not text.startswith("/"):
        raise UsageError(f"--workdir {text!r} is not absolute", "give an absolute path, e.g. -w /app")
    return text


def parse_entrypoint(text: str | None) -> list[str] | None:
    """Docker's --entrypoint is one executable; "" clears the image's entrypoint."""
    if text is None:
        return None
    return [text] if text else []


def parse_kernel(text: str | None) -> str | None:
    """--kernel: an existing guest kernel file, kept as an absolute path."""
    if text is None:
        return None
    path = Path(text).expanduser()
    if not path.is_file():
        raise UsageError(f"--kernel {text}: no such file", "give the path of an uncompressed vmlinux")
    return str(path.resolve())

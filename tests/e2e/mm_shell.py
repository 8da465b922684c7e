"""A private `mm` installation on the guest host for the run and lifecycle e2e tests
(tests/e2e/test_run*.py, test_lifecycle*.py), driven by bash scripts as a user types
commands:

    mm = MMShell(guest_host, "run")
    r = mm.sh('run --rm --network none mm/default sh -c "exit 3"; echo rc=$?')
    assert values(r)["rc"] == "3"
    mm.close()                      # removes every machine and the state directory

Each shell has its own state directory (MM_STATE) on the guest host's own tmpfs (/tmp
inside the lab: Unix sockets cannot be bound on the 9p share), its own network
namespace prefix (MM_NETNS_PREFIX) and its own default subnet (MM_NETWORK_SUBNET), so
tests running beside other engineers' machines in the shared lab can count what they
own. Scripts see `$MM` (the mm command), `$OUT` (a directory this side reads back:
`mm.out(name)`), `$PREFIX` and a bash function `run` (= `mm run` plus the shell's run
flags). Every `mm` call in the lab costs a Python start-up there (seconds under TCG), so
tests batch their checks into few scripts.

Set MM_E2E_NO_JAIL=1 to run the machines with `--no-jail` (when the jail itself is
broken and the rest should still be tested; the tests say so in their output).
"""
from __future__ import annotations

import json
import os
import random
import re
import secrets
import subprocess
from pathlib import Path

from vmm import paths

MM = str(paths.REPO_ROOT / ".venv" / "bin" / "mm")
PYTHON = str(paths.REPO_ROOT / ".venv" / "bin" / "python")
IMAGE = "mm/default"
GREETING = "Hello from micromachines"  # the default image's Cmd (vmm/image/default.py)


_TAKEN: set[str] = set()  # subnets this test session handed out


def free_subnet(guest_host) -> str:
    """A /16 in 10.100-199 that no earlier shell of this session took and no route on the
    guest host covers. A random pick among 100 collided: every shell's bridge (and so its
    route) stays until its network is pruned, and a bridge left by a killed test makes the
    next `mm run` refuse the overlapping subnet, as it should. 10.88/16, the default, is
    outside the range (other engineers' machines in the shared lab)."""
    import ipaddress

    res = guest_host.run(["ip", "-4", "-o", "route", "show"], timeout=60)
    routed = [ipaddress.ip_network(m, strict=False)
              for m in re.findall(r"^(\d+\.\d+\.\d+\.\d+(?:/\d+)?)\s", res.stdout, re.M)]
    candidates = [f"10.{n}.0.0/16" for n in range(100, 200)]
    random.shuffle(candidates)
    for subnet in candidates:
        net = ipaddress.ip_network(subnet)
        if subnet not in _TAKEN and not any(net.overlaps(r) for r in routed):
            _TAKEN.add(subnet)
            return subnet
    raise AssertionError(f"no free 10.100-199.0.0/16 left on the guest host: {res.stdout[-2000:]}")


def run_flags() -> list[str]:
    return ["--no-jail"] if os.environ.get("MM_E2E_NO_JAIL") == "1" else []


def values(result: subprocess.CompletedProcess) -> dict[str, str]:
    """key=value words a script printed (later ones win)."""
    return dict(m.groups() for m in re.finditer(r"(\w+)=(\S*)", result.stdout))


def explain(result: subprocess.CompletedProcess) -> str:
    return f"exit {result.returncode}\n--- stdout\n{result.stdout[-4000:]}\n--- stderr\n{result.stderr[-4000:]}"


class MMShell:
    def __init__(self, guest_host, tag: str) -> None:
        self.gh = guest_host
        token = secrets.token_hex(3)
        self.state = f"/tmp/mm-e2e-{tag}-{token}"
        self.prefix = f"mt{token}-"
        self.subnet = free_subnet(guest_host)
        self.outdir = Path(guest_host.workdir) / f"{tag}-{token}"
        self.outdir.mkdir(parents=True, exist_ok=True)
        self.env = {"MM_STATE": self.state, "MM_NETNS_PREFIX": self.prefix, "MM_NETWORK_SUBNET": self.subnet}

    def sh(self, script: str, timeout: float = 900) -> subprocess.CompletedProcess:
        prelude = (f'set -u; mkdir -p "$MM_STATE"; cd "$OUT"; '
                   f'run() {{ "$MM" run {" ".join(run_flags())} "$@"; }}; ')
        env = {**self.env, "MM": MM, "OUT": str(self.outdir), "PREFIX": self.prefix, "PY": PYTHON}
        return self.gh.run(["bash", "-c", prelude + script], env=env, timeout=timeout)

    def out(self, name: str) -> str:
        path = self.outdir / name
        return path.read_text(errors="replace") if path.exists() else ""

    def json(self, name: str):
        text = self.out(name)
        try:
            return json.loads(text)
        except ValueError:
            raise AssertionError(f"{name} is not JSON: {text[-2000:]!r}") from None

    def close(self) -> None:
        """Remove every machine of this shell, its bridge (network prune), then its state
        directory."""
        self.sh('ids=$("$MM" ps -aq 2>/dev/null); [ -z "$ids" ] || "$MM" rm -f $ids >/dev/null 2>&1; '
                '"$MM" network prune >/dev/null 2>&1; rm -rf "$MM_STATE"', timeout=600)

"""The worker's instructions: one JSON file written by the CLI before each start.

It names the machine and start generation (so the worker can only record outcomes of
its own start), the factory and the config it builds the VM from, how to stop
gracefully, and how the VMM is jailed (`jail`, see vmm.jail.config). A spec is plain
data so a restarted, restored or branched machine can be described the same way.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from vmm.plain import REQUIRED, Frozen

SPEC_VERSION = 1


class WorkerSpec(Frozen):
    FIELDS = {
        "machine_id": REQUIRED,
        "generation": REQUIRED,
        "state_dir": REQUIRED,
        "factory": REQUIRED,
        "machine": REQUIRED,
        "stop_timeout": 10.0,
        "agent_port": None,      # vsock port of the guest agent (graceful stop, exec)
        # vmm.jail.config.JailSpec as a dict; {} is a full jail with limits from `machine`.
        # Optional and additive: version 1 specs without it still read.
        "jail": {},
        "attach_port": None,     # vsock port of the workload's stdio (vmm/worker/workload.py)
        "stdin_open": False,     # `mm run -i`: keep the workload's stdin open for clients (else EOF at once)
        "cpuset": None,          # host CPUs the VMM's threads run on (vmm.worker.affinity); None: any
        "v": SPEC_VERSION,
    }

    def write(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.asdict(), indent=1, sort_keys=True))
        os.replace(tmp, path)

    @classmethod
    def read(cls, path: Path) -> "WorkerSpec":
        with open(path) as f:
            data = json.load(f)
        if data.get("v") != SPEC_VERSION:
            raise ValueError(f"worker spec version {data.get('v')!r} is not {SPEC_VERSION}")
        return cls(**data)

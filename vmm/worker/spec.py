"""The worker's instructions: one JSON file written by the CLI before each start.

It names the machine and start generation (so the worker can only record outcomes of
its own start), the factory and the config it builds the VM from, and how to stop
gracefully. A spec is plain data so a restarted, restored or branched machine can be
described the same way.
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

SPEC_VERSION = 1


@dataclasses.dataclass(frozen=True)
class WorkerSpec:
    machine_id: str
    generation: int
    state_dir: str
    factory: str
    machine: dict[str, Any]
    stop_timeout: float = 10.0
    agent_port: int | None = None  # vsock port of the guest agent (graceful stop, exec)
    v: int = SPEC_VERSION

    def write(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(dataclasses.asdict(self), indent=1, sort_keys=True))
        os.replace(tmp, path)

    @classmethod
    def read(cls, path: Path) -> "WorkerSpec":
        data = json.loads(Path(path).read_text())
        if data.get("v") != SPEC_VERSION:
            raise ValueError(f"worker spec version {data.get('v')!r} is not {SPEC_VERSION}")
        return cls(**data)

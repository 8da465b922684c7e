"""Where a machine's files live under the state directory.

    <state>/machines/<short id>/
        spec.json     what the worker runs (written by the CLI before each start)
        api.sock      the worker's control API (vmm/api/PROTOCOL.md)
        console.log   everything the guest wrote to its console, across starts
        output.log    the workload's stdout/stderr/exit as agent frames, across starts
        worker.log    the worker's own diagnostics (Python warnings, tracebacks)
        ready         nothing: the directory is removed whole by `mm rm`

The short id keeps socket paths well under the 108-byte limit of AF_UNIX addresses.
"""
from __future__ import annotations

from pathlib import Path

from vmm import paths
from vmm.errors import ConfigError
from vmm.plain import REQUIRED, Frozen

_SUN_PATH_MAX = 107


class MachinePaths(Frozen):
    FIELDS = {"root": REQUIRED}  # Path

    @classmethod
    def for_id(cls, machine_id: str, state: Path | None = None) -> "MachinePaths":
        base = state if state is not None else paths.state_dir()
        return cls(base / "machines" / machine_id[:12])

    @property
    def spec(self) -> Path:
        return self.root / "spec.json"

    @property
    def api_socket(self) -> Path:
        return self.root / "api.sock"

    @property
    def console_log(self) -> Path:
        return self.root / "console.log"

    @property
    def output_log(self) -> Path:
        return self.root / "output.log"

    @property
    def worker_log(self) -> Path:
        return self.root / "worker.log"

    def create(self) -> "MachinePaths":
        if len(str(self.api_socket).encode()) > _SUN_PATH_MAX:
            raise ConfigError(
                f"state directory path too long for a Unix socket: {self.api_socket}",
                "set MM_STATE to a shorter directory",
            )
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        return self

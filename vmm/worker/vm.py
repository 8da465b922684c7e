"""What the worker needs from a VM: the `VirtualMachine` interface and its exit state.

The worker never builds a VM itself: the spec names a factory ("module:function"),
called as `factory(config: dict, console: ConsoleSink, events: EventRegistry)`, that
returns a VirtualMachine. The production factory adapts `vmm.machine`; tests use
factories that run real tiny guests.
"""
from __future__ import annotations

import importlib

from vmm.errors import ConfigError
from vmm.plain import REQUIRED, Frozen

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~4 ms of import time; annotations here are strings
    from typing import Any, Callable, Protocol

    ConsoleSink = Callable[[bytes], None]
else:
    Protocol = object  # at run time VirtualMachine only documents the interface

# Docker reports 128+9 for a container it killed; we follow it for a VM we killed.
KILLED_EXIT_CODE = 137


class ExitState(Frozen):
    """How the VM ended. `exit_code` is the workload's when the guest reported one."""

    FIELDS = {
        "reason": REQUIRED,  # poweroff | reboot | panic | triple_fault | killed | error
        "exit_code": None,   # int | None
        "detail": "",
    }

    def effective_code(self) -> int:
        """The code `mm run` / `mm wait` return."""
        if self.exit_code is not None:
            return self.exit_code
        if self.reason in ("poweroff", "reboot"):
            return 0
        if self.reason == "killed":
            return KILLED_EXIT_CODE
        return 1


class VirtualMachine(Protocol):
    """A VM the worker drives. Methods are called from the worker's loop thread."""

    vsock_socket: str | None  # host Unix socket of the vsock device (None: no vsock)

    def start(self) -> None:
        """Start the vCPUs; returns once they run."""

    def pause(self) -> None:
        """Stop every vCPU at its next exit; returns once all are stopped."""

    def resume(self) -> None: ...

    def request_shutdown(self) -> None:
        """Ask the guest to power off (what the hardware offers); returns at once."""

    def kill(self) -> None:
        """End the VM now; `wait` then returns ExitState("killed")."""

    def wait(self, timeout: float | None = None) -> ExitState | None:
        """Block until the VM has ended; None on timeout."""

    def write_console(self, data: bytes) -> None:
        """Keystrokes for the guest's console."""

    def stats(self) -> dict[str, Any]:
        """Numbers worth showing in `mm stats` (vcpus, memory, exits...)."""

    def close(self) -> None:
        """Release fds and memory after the VM has ended."""


if TYPE_CHECKING:
    Factory = Callable[..., VirtualMachine]


def load_factory(ref: str) -> Factory:
    module, _, attr = ref.partition(":")
    if not module or not attr:
        raise ConfigError(f"bad machine factory {ref!r}", "use the form package.module:function")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"cannot load machine factory {ref!r}: {exc}") from None

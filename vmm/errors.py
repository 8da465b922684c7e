"""The one exception hierarchy: every error a user can see is an MMError with a message and a hint.

Each area subclasses MMError in its own module when it needs more than the generic
classes here; the CLI prints `error: <message>` and `hint: <hint>` and never a traceback
unless --debug is given.
"""
from __future__ import annotations

import enum


class ExitStatus(enum.IntEnum):
    """Process exit codes of `mm` itself (a workload's own code passes through `mm run`)."""

    OK = 0
    ERROR = 1
    USAGE = 2
    INTERRUPTED = 130
    # Docker's convention for "the runtime failed before the workload ran".
    RUN_FAILED = 125


class MMError(Exception):
    """Root of all user-facing errors."""

    hint: str = ""
    exit_status: ExitStatus = ExitStatus.ERROR

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if hint is not None:
            self.hint = hint

    def __str__(self) -> str:
        return self.message


class UsageError(MMError):
    """Bad flags or arguments."""

    exit_status = ExitStatus.USAGE


class ConfigError(MMError):
    """A setting, path or environment variable is wrong."""


class HostError(MMError):
    """The host lacks something we need (KVM, tun, nftables, a package)."""

    hint = "run `mm doctor` to see what this host can do"


class KvmError(MMError):
    """A KVM ioctl failed; carries the errno and the ioctl's name."""

    def __init__(self, name: str, errno: int, message: str | None = None, hint: str | None = None) -> None:
        import os

        self.ioctl = name
        self.errno = errno
        super().__init__(message or f"KVM ioctl {name} failed: {os.strerror(errno)} (errno {errno})", hint)


class GuestError(MMError):
    """The guest did something that ended the VM (bad kernel, panic, triple fault)."""


class NotFound(MMError):
    """A named thing (VM, image, network) does not exist."""


class Conflict(MMError):
    """A named thing exists already or is in the wrong state."""

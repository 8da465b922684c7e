"""Errors about machine records: unknown machine, taken name, bad name, wrong state."""
from __future__ import annotations

from vmm.errors import Conflict, NotFound, UsageError


class MachineNotFound(NotFound):
    """No machine has this name, id or id prefix."""

    hint = "`mm ps -a` lists every machine"


class AmbiguousMachine(UsageError):
    """An id prefix matches several machines."""

    hint = "give more characters of the id, or the name"


class NameInUse(Conflict):
    """Another machine already has this name."""

    hint = "choose another --name, or remove the other machine with `mm rm NAME`"


class BadName(UsageError):
    """A machine name with characters Docker would refuse."""

    hint = "names start with a letter or digit and contain only [a-zA-Z0-9_.-]"


class InvalidTransition(Conflict):
    """The machine is not in a state that allows this change (e.g. pause an exited VM)."""

    def __init__(self, name: str, current: str, wanted: str, hint: str | None = None) -> None:
        self.current = current
        self.wanted = wanted
        super().__init__(f"machine {name} is {current}; cannot make it {wanted}", hint)

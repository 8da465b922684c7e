"""The lab's errors: one MMError subclass per way the lab can fail a user."""
from __future__ import annotations

from vmm.errors import MMError


class LabError(MMError):
    """The lab cannot be prepared, booted or reached."""

    hint = "see the lab's serial log (`mm lab status` shows where it is)"


class LabNotPrepared(LabError):
    hint = "run `mm lab prepare`"


class LabTimeout(LabError):
    """A command in the lab ran past its timeout (it was killed with its process group)."""

    hint = "raise --timeout, or look at what the command waits for"

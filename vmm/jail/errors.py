"""The jail's error: a step of building the cell failed (or the host cannot build it)."""
from __future__ import annotations

from vmm.errors import HostError


class JailError(HostError):
    """The worker could not jail itself; the VM does not start unjailed."""

    hint = "the jail needs root and a Linux >= 5.8 host; `mm run --no-jail` runs without it (debugging only)"

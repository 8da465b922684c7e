"""Errors of the guest area: talking to the agent, building the initramfs, SSH keys."""
from __future__ import annotations

from vmm.errors import HostError, MMError


class AgentError(MMError):
    """The exec agent refused a request or the stream to it broke."""

    hint = "is the VM running, and was it booted with mm's initramfs (mm-init)?"


class AgentProtocolError(AgentError):
    """The other end does not speak our framed protocol (or a different version)."""

    hint = "the guest's mm-init and this mm are from different versions; rebuild the initramfs"


class InitramfsError(HostError):
    """The initramfs could not be built (mm-init missing, dropbear missing, bad input)."""


class BootConfigError(MMError):
    """A boot config value cannot be handed to the guest."""


class SshKeyError(HostError):
    """Generating a VM's SSH keys failed."""

    hint = "install dropbear-bin and openssh-client (./setup.sh does)"

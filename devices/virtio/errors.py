"""Errors raised by the virtio transport, the virtqueue code and the virtio devices.

`DeviceError` is the vmm-independent root (message + hint, like `vmm.errors.MMError`,
which the VMM maps it onto); every device folder subclasses it for its own failures.
Guest misbehaviour is split in two: a bad request (`ChainError`) is dropped, a broken
queue (`QueueCorrupt`) marks the device DEVICE_NEEDS_RESET.
"""
from __future__ import annotations


class DeviceError(Exception):
    """Root of device-model errors; carries a message and a hint for the user."""

    hint: str = ""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if hint is not None:
            self.hint = hint

    def __str__(self) -> str:
        return self.message


class QueueError(DeviceError):
    """A virtqueue was configured or used in a way the spec forbids."""

    hint = "the guest driver misbehaved; the device is marked DEVICE_NEEDS_RESET"


class QueueCorrupt(QueueError):
    """Ring addresses or indices are unusable: the whole queue is unsafe to touch."""


class ChainError(QueueError):
    """One descriptor chain is malformed; the request is dropped (used with length 0).

    `head` is the chain's head index (already consumed from the avail ring) so the
    device can return it to the driver.
    """

    hint = "the guest sent a malformed request; it was dropped"

    def __init__(self, message: str, head: int) -> None:
        super().__init__(message)
        self.head = head


class TransportError(DeviceError):
    """The driver broke the virtio-mmio register protocol."""

    hint = "the guest driver misbehaved on the virtio-mmio registers"


class BackendError(DeviceError):
    """A host-side backend (file, TAP, socket) could not be opened or used."""

"""Errors devices and the VMM share, in a module of their own so the boot path can raise
and catch them without importing devices.interfaces (its Protocols need `typing`, which
costs real time at every VM start under emulation). devices.interfaces re-exports them.
"""


class GuestMemoryError(ValueError):
    """A guest-supplied address or length falls outside guest RAM."""

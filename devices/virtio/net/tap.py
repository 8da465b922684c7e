"""Opening and configuring a TAP device (/dev/net/tun) for virtio-net.

The worker opens the TAP before it jails itself and hands the fd to the device; the
device only sets the vnet header size and offloads on it.
"""
from __future__ import annotations

import fcntl
import os
import struct

from . import NetError

TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000


def open_tap(name: str) -> int:
    """Open (or create) TAP `name` with a vnet header, non-blocking; return its fd."""
    if not name or len(name.encode()) > 15:
        raise NetError(f"bad TAP name {name!r}: 1 to 15 bytes")
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise NetError(f"cannot open /dev/net/tun: {e.strerror}", hint="load the tun module (modprobe tun)") from None
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), IFF_TAP | IFF_NO_PI | IFF_VNET_HDR))
    except OSError as e:
        os.close(fd)
        raise NetError(f"cannot attach to TAP {name}: {e.strerror}") from None
    return fd


def configure(fd: int, hdr_size: int, offloads: int) -> None:
    """Set the vnet header size and what the kernel may hand us (TUN_F_*)."""
    try:
        fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", hdr_size))
        fcntl.ioctl(fd, TUNSETOFFLOAD, offloads)
    except OSError as e:
        raise NetError(f"cannot configure the TAP's vnet header/offloads: {e.strerror}",
                       hint="the TAP must be opened with IFF_VNET_HDR") from None

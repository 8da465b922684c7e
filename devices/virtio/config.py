"""User-facing device specs (`--disk PATH[:ro]`, `--tap NAME[:MAC]`, `--vsock CID:UDS_PATH`,
`--rng`, `--balloon [MIB][,reporting=off]`) parsed into frozen dataclasses that build the devices.

The CLI passes the strings through; a bad spec raises `SpecError` with a hint. Building a
device opens its backend (file, TAP, socket), so the worker calls `build()` before it
jails itself.
"""
from __future__ import annotations

import dataclasses
import os
import zlib

from .errors import DeviceError


class SpecError(DeviceError):
    """A device option on the command line is malformed."""


@dataclasses.dataclass(frozen=True)
class DiskSpec:
    path: str
    read_only: bool = False

    @classmethod
    def parse(cls, text: str) -> "DiskSpec":
        path, ro = text, False
        if text.endswith(":ro") or text.endswith(":rw"):
            path, ro = text[:-3], text.endswith(":ro")
        if not path:
            raise SpecError(f"bad --disk {text!r}", hint="use --disk PATH or --disk PATH:ro")
        return cls(os.path.abspath(path), ro)

    def build(self, disk_id: str | None = None):
        from .block.device import BlockDevice
        return BlockDevice(self.path, self.read_only, disk_id)


@dataclasses.dataclass(frozen=True)
class TapSpec:
    name: str
    mac: str

    @classmethod
    def parse(cls, text: str) -> "TapSpec":
        name, _, mac = text.partition(":")
        if not name or len(name.encode()) > 15:
            raise SpecError(f"bad --tap {text!r}", hint="use --tap NAME (1-15 bytes) or --tap NAME:MAC")
        mac = mac or default_mac(name)
        from .net.device import parse_mac
        try:
            parse_mac(mac)
        except DeviceError as e:
            raise SpecError(f"bad --tap {text!r}: {e}", hint="write the MAC as 52:54:00:xx:xx:xx") from None
        return cls(name, mac.lower())

    def build(self):
        from .net.device import NetDevice
        from .net.tap import open_tap
        return NetDevice(open_tap(self.name), self.mac, self.name)


def default_mac(name: str) -> str:
    """A stable locally administered MAC derived from the TAP name."""
    h = zlib.crc32(name.encode()).to_bytes(4, "big")
    return "52:54:" + ":".join(f"{b:02x}" for b in h)


@dataclasses.dataclass(frozen=True)
class VsockSpec:
    cid: int
    uds_path: str

    @classmethod
    def parse(cls, text: str) -> "VsockSpec":
        cid, sep, path = text.partition(":")
        if not sep or not cid.isdigit() or not path:
            raise SpecError(f"bad --vsock {text!r}", hint="use --vsock CID:UDS_PATH, e.g. 3:/tmp/vm.sock")
        if not 2 < int(cid) < 0xFFFFFFFF:
            raise SpecError(f"bad --vsock CID {cid}", hint="CIDs 0-2 and 0xffffffff are reserved; use 3 or more")
        return cls(int(cid), os.path.abspath(path))

    def build(self):
        from .vsock.device import VsockDevice
        return VsockDevice(self.cid, self.uds_path)


@dataclasses.dataclass(frozen=True)
class RngSpec:
    """`--rng`: a virtio-rng fed from the host's getrandom()."""

    def build(self):
        from .rng.device import RngDevice
        return RngDevice()


@dataclasses.dataclass(frozen=True)
class BalloonSpec:
    """`--balloon [MIB][,reporting=off]`: the initial target, and whether the device offers
    free page reporting (on by default, as Firecracker's `free_page_reporting` option)."""
    target_mib: int = 0
    reporting: bool = True

    @classmethod
    def parse(cls, text: "str | int | None") -> "BalloonSpec":
        if text is None or text == "":
            return cls()
        target, _, option = str(text).partition(",")
        hint = "use --balloon, --balloon MIB (initial target) or --balloon MIB,reporting=off"
        if not target.isdigit() or option not in ("", "reporting=on", "reporting=off"):
            raise SpecError(f"bad --balloon {text!r}", hint=hint)
        return cls(int(target), reporting=option != "reporting=off")

    def build(self):
        from .balloon.device import BalloonDevice
        return BalloonDevice(self.target_mib, reporting=self.reporting)

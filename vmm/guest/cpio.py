"""A writer for the kernel's initramfs format: cpio "newc" (SVR4, no CRC).

Entries are built in memory, so device nodes (/dev/console) need no root. Parent
directories are added automatically. Each header is `070701` and thirteen 8-digit
hex fields; names and data are padded to 4 bytes; the archive ends with
TRAILER!!! and is padded to 512 bytes so further archives can be appended (the
kernel unpacks concatenated archives in order, later files replacing earlier ones).
"""
from __future__ import annotations

import stat

from vmm.guest.errors import InitramfsError


class CpioWriter:
    def __init__(self) -> None:
        self._out = bytearray()
        self._ino = 1
        self._seen: set[str] = set()

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        name = name.strip("/")
        if not name or ".." in name.split("/"):
            raise InitramfsError(f"bad initramfs path {name!r}")
        if name in self._seen:
            raise InitramfsError(f"{name} is in the initramfs twice")
        self._seen.add(name)
        raw = name.encode() + b"\0"
        fields = (self._ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(raw), 0)
        self._ino += 1
        self._out += b"070701" + b"".join(b"%08X" % f for f in fields) + raw
        self._pad()
        self._out += data
        self._pad()

    def _pad(self, align: int = 4) -> None:
        self._out += b"\0" * (-len(self._out) % align)

    def _parents(self, name: str) -> None:
        parts = name.strip("/").split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d not in self._seen:
                self._entry(d, stat.S_IFDIR | 0o755)

    def add_dir(self, name: str, mode: int = 0o755) -> None:
        self._parents(name)
        if name.strip("/") not in self._seen:
            self._entry(name, stat.S_IFDIR | mode)

    def add_file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._parents(name)
        self._entry(name, stat.S_IFREG | mode, data)

    def add_symlink(self, name: str, target: str) -> None:
        self._parents(name)
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def add_chardev(self, name: str, major: int, minor: int, mode: int = 0o600) -> None:
        self._parents(name)
        self._entry(name, stat.S_IFCHR | mode, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        self._pad(512)
        return bytes(self._out)


def read_names(archive: bytes) -> dict[str, tuple[int, bytes]]:
    """name -> (mode, data) for every entry of (possibly concatenated) newc archives."""
    out: dict[str, tuple[int, bytes]] = {}
    off = 0
    while off + 110 <= len(archive):
        if archive[off:off + 6] != b"070701":
            if archive[off] == 0:
                off += 1  # padding between archives
                continue
            raise InitramfsError(f"not a newc header at offset {off}")
        f = [int(archive[off + 6 + 8 * i: off + 14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = f[1], f[6], f[11]
        name_start = off + 110
        name = archive[name_start:name_start + namesize - 1].decode()
        data_start = name_start + namesize + (-(110 + namesize) % 4)
        data = archive[data_start:data_start + size]
        off = data_start + size + (-size % 4)
        if name != "TRAILER!!!":
            out[name] = (mode, data)
    return out

"""Parse and execute one virtio-blk request (virtio 1.2 §5.2.6).

A request is a 16-byte readable header {u32 type, u32 reserved, u64 sector}, then data
(readable for OUT, DISCARD, WRITE_ZEROES; writable for IN, GET_ID) and one writable
status byte at the very end. Sector ranges are checked against the capacity and data
lengths against the sector size before any host I/O; I/O goes straight between the
file and the guest's buffers with preadv/pwritev (GIL released inside).
"""
from __future__ import annotations

import ctypes
import errno
import os
import struct

from . import (
    ID_BYTES, S_IOERR, S_OK, S_UNSUPP, SECTOR_SIZE, T_DISCARD, T_FLUSH, T_GET_ID, T_IN, T_OUT,
    T_WRITE_ZEROES, WRITE_ZEROES_FLAG_UNMAP,
)

HEADER = struct.Struct("<IIQ")
SEGMENT = struct.Struct("<QII")  # discard / write-zeroes range: sector, num_sectors, flags
MAX_SEGMENTS = 1
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10

_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]


class Malformed(Exception):
    """The chain cannot be a block request (no header or no status byte): drop it."""


class Request:
    """A parsed request: type, sector, and where its data and status byte live."""

    __slots__ = ("chain", "type", "sector", "data_len")

    def __init__(self, chain) -> None:
        if chain.readable_len < HEADER.size or chain.writable_len < 1:
            raise Malformed("request without a 16-byte header or a status byte")
        self.chain = chain
        self.type, _, self.sector = HEADER.unpack(chain.read(0, HEADER.size))
        if self.type in (T_IN, T_GET_ID):
            self.data_len = chain.writable_len - 1
        else:
            self.data_len = chain.readable_len - HEADER.size

    @property
    def nbytes(self) -> int:
        """Bytes this request moves (for the bandwidth limiter)."""
        return self.data_len if self.type in (T_IN, T_OUT) else 0

    def finish(self, status: int, written: int = 0) -> int:
        """Write the status byte; return the used length (data written + status)."""
        self.chain.write(self.chain.writable_len - 1, bytes([status]))
        return written + 1


def execute(req: Request, disk) -> int:
    """Run `req` against `disk` (a BlockDevice); return the used length."""
    t = req.type
    m = disk.metrics
    if t in (T_OUT, T_DISCARD, T_WRITE_ZEROES) and disk.read_only:
        m.io_errors += 1
        return req.finish(S_IOERR)
    try:
        if t == T_IN:
            return _read(req, disk)
        if t == T_OUT:
            return _write(req, disk)
        if t == T_FLUSH:
            m.flush_count += 1
            if not disk.read_only:
                os.fdatasync(disk.fd)
            return req.finish(S_OK)
        if t == T_GET_ID:
            m.get_id_count += 1
            ident = disk.disk_id.encode()[:ID_BYTES].ljust(ID_BYTES, b"\0")
            n = req.chain.write(0, ident[:req.data_len])
            return req.finish(S_OK, n)
        if t in (T_DISCARD, T_WRITE_ZEROES):
            return _ranges(req, disk)
    except OSError:
        m.io_errors += 1
        return req.finish(S_IOERR)
    m.unsupported += 1
    return req.finish(S_UNSUPP)


def _check_range(disk, sector: int, nbytes: int) -> bool:
    return nbytes % SECTOR_SIZE == 0 and sector + nbytes // SECTOR_SIZE <= disk.capacity


def _read(req: Request, disk) -> int:
    if not _check_range(disk, req.sector, req.data_len):
        disk.metrics.io_errors += 1
        return req.finish(S_IOERR)
    views = req.chain.writable_views(0, req.data_len)
    offset, done = req.sector * SECTOR_SIZE, 0
    while views:
        n = os.preadv(disk.fd, views, offset + done)
        if n == 0:  # past EOF of a file shorter than a sector multiple: zeros
            for v in views:
                v[:] = bytes(len(v))
            break
        done += n
        views = _advance(views, n)
    disk.metrics.read_count += 1
    disk.metrics.read_bytes += req.data_len
    return req.finish(S_OK, req.data_len)


def _write(req: Request, disk) -> int:
    if not _check_range(disk, req.sector, req.data_len):
        disk.metrics.io_errors += 1
        return req.finish(S_IOERR)
    views = req.chain.readable_views(HEADER.size, req.data_len)
    offset, done = req.sector * SECTOR_SIZE, 0
    while views:
        n = os.pwritev(disk.fd, views, offset + done)
        done += n
        views = _advance(views, n)
    disk.metrics.write_count += 1
    disk.metrics.write_bytes += req.data_len
    return req.finish(S_OK)


def _advance(views: list, n: int) -> list:
    while views and n >= len(views[0]):
        n -= len(views[0])
        views = views[1:]
    if views and n:
        views = [views[0][n:]] + views[1:]
    return views


def _ranges(req: Request, disk) -> int:
    if req.data_len % SEGMENT.size or not 0 < req.data_len // SEGMENT.size <= MAX_SEGMENTS:
        disk.metrics.io_errors += 1
        return req.finish(S_IOERR)
    data = req.chain.read(HEADER.size, req.data_len)
    for i in range(req.data_len // SEGMENT.size):
        sector, count, flags = SEGMENT.unpack_from(data, i * SEGMENT.size)
        if sector + count > disk.capacity or (req.type == T_DISCARD and flags):
            disk.metrics.io_errors += 1
            return req.finish(S_IOERR)
        offset, length = sector * SECTOR_SIZE, count * SECTOR_SIZE
        if req.type == T_DISCARD:
            disk.metrics.discard_count += 1
            _fallocate(disk.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length)
        else:
            disk.metrics.write_zeroes_count += 1
            _zero(disk.fd, offset, length, bool(flags & WRITE_ZEROES_FLAG_UNMAP))
    return req.finish(S_OK)


def _fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    if length and _libc.fallocate(fd, mode, offset, length) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def _zero(fd: int, offset: int, length: int, unmap: bool) -> None:
    modes = [FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE] if unmap else []
    modes.append(FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE)
    for mode in modes:
        try:
            _fallocate(fd, mode, offset, length)
            return
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise
    chunk = bytes(min(length, 1 << 20))
    done = 0
    while done < length:
        done += os.pwrite(fd, chunk[:length - done], offset + done)

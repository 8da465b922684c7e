"""The 44-byte virtio_vsock_hdr and building/parsing packets on descriptor chains."""
from __future__ import annotations

import dataclasses
import struct

HDR = struct.Struct("<QQIIIHHIII")
HDR_SIZE = HDR.size  # 44


@dataclasses.dataclass(slots=True)
class Header:
    src_cid: int
    dst_cid: int
    src_port: int
    dst_port: int
    len: int
    type: int
    op: int
    flags: int = 0
    buf_alloc: int = 0
    fwd_cnt: int = 0

    def pack(self) -> bytes:
        return HDR.pack(self.src_cid, self.dst_cid, self.src_port, self.dst_port, self.len, self.type,
                        self.op, self.flags, self.buf_alloc & 0xFFFFFFFF, self.fwd_cnt & 0xFFFFFFFF)

    @classmethod
    def unpack(cls, data: bytes) -> "Header":
        return cls(*HDR.unpack(data))

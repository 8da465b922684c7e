"""virtio-vsock (device id 19): a guest CID whose streams reach host Unix sockets in
Firecracker's model.

Host → guest: connect to the device's Unix socket and write `CONNECT <port>\\n`; the
answer is `OK <hostport>\\n`, then the socket is the stream. Guest → host port P: the
device connects to the listener at `<socket>_P`. Constants (virtio 1.2 §5.10,
linux/virtio_vsock.h) and the error type live here; `packet` is the wire header,
`connection` one stream's flow control, `muxer` the host side, `device` the device.
"""
from __future__ import annotations

from ..errors import BackendError

HOST_CID = 2
RX_QUEUE, TX_QUEUE, EVENT_QUEUE = 0, 1, 2
QUEUE_SIZE = 256

TYPE_STREAM = 1

OP_REQUEST = 1
OP_RESPONSE = 2
OP_RST = 3
OP_SHUTDOWN = 4
OP_RW = 5
OP_CREDIT_UPDATE = 6
OP_CREDIT_REQUEST = 7

SHUTDOWN_RCV = 1
SHUTDOWN_SEND = 2

EVENT_TRANSPORT_RESET = 0

# Our receive buffer per stream (what the guest may have in flight towards the host).
CONN_BUF_ALLOC = 256 * 1024
# Host ports handed to host-initiated streams start here (as in Firecracker).
FIRST_LOCAL_PORT = 1 << 30
# Longest `CONNECT <port>\n` line we accept before hanging up (read in C: _fast.MAX_LINE).
MAX_CONNECT_LINE = 32


class VsockError(BackendError):
    """The vsock Unix socket cannot be created or used."""

    hint = "check the --vsock socket path: its directory must exist and no other VM may use it"

"""virtio-net (device id 1) over a TAP device opened with IFF_VNET_HDR.

The guest's 12-byte virtio_net_hdr_v1 is passed through to the TAP unchanged (the
kernel understands it), so checksum and TSO offloads work in both directions: the
guest's HOST_* features let it send partially checksummed / GSO frames, and its
GUEST_* features are mirrored into TUNSETOFFLOAD so the kernel hands us such frames. With MRG_RXBUF one frame may fill several small rx
buffers (the count goes in the header's num_buffers).
Constants from linux/virtio_net.h and linux/if_tun.h.
"""
from __future__ import annotations

from ..errors import BackendError

RX_QUEUE, TX_QUEUE = 0, 1
QUEUE_SIZE = 256
VNET_HDR_SIZE = 12  # virtio_net_hdr_v1: VERSION_1 always uses the num_buffers field
MAX_FRAME = 65562  # vnet header + 64 KiB GSO frame + Ethernet header
MAX_PLAIN_FRAME = VNET_HDR_SIZE + 1522  # without guest TSO: MTU 1500 + Ethernet header + VLAN tag + FCS room
NUM_BUFFERS_OFFSET = 10  # virtio_net_hdr_v1.num_buffers

F_CSUM = 0
F_GUEST_CSUM = 1
F_MAC = 5
F_GUEST_TSO4 = 7
F_GUEST_TSO6 = 8
F_GUEST_ECN = 9
F_HOST_TSO4 = 11
F_HOST_TSO6 = 12
F_HOST_ECN = 13
F_MRG_RXBUF = 15
F_STATUS = 16

STATUS_LINK_UP = 1

TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_TSO_ECN = 0x08

HDR_F_NEEDS_CSUM = 1


class NetError(BackendError):
    """The TAP device cannot be opened or configured."""

    hint = "the TAP must exist or be creatable (root or CAP_NET_ADMIN, /dev/net/tun present)"

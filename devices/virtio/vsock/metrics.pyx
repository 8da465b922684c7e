"""Counters of one virtio-vsock device (a compiled class: the device thread bumps them
as C fields, metrics.pxd; Python reads and sets them as attributes)."""

FIELDS = ("host_connects", "guest_connects", "connect_failures", "rx_packets", "rx_bytes", "tx_packets",
          "tx_bytes", "resets_sent", "credit_updates_sent", "invalid_packets", "open_streams")


cdef class VsockMetrics:
    def __init__(self, **values):
        for name, value in values.items():
            if name not in FIELDS:
                raise TypeError(f"VsockMetrics has no counter {name!r}")
            setattr(self, name, value)

    def snapshot(self) -> dict:
        return {name: getattr(self, name) for name in FIELDS}

    def __repr__(self) -> str:
        return "VsockMetrics(" + ", ".join(f"{k}={v}" for k, v in self.snapshot().items()) + ")"

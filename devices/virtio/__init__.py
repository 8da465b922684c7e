"""virtio-mmio devices: the transport (`mmio`), the shared split virtqueue (`queue`,
compiled `_queue` + pure-Python twin `queue_py`), and one package per device
(`block`, `net`, `vsock`, `rng`, `balloon`). `testing` holds the driver-side mock."""

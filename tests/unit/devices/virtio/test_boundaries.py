"""Architecture rules for devices/: no imports of vmm, and whole-device snapshots."""
from __future__ import annotations

import ast
import pathlib

import devices
from devices.virtio import snapshot
from devices.virtio.mmio import MmioTransport, cmdline_device
from devices.virtio.rng.device import RngDevice
from devices.virtio.testing import MockDriver


def test_devices_never_import_vmm():
    root = pathlib.Path(devices.__file__).parent
    for path in root.rglob("*.py*"):
        if path.suffix not in (".py", ".pyx"):
            continue
        src = path.read_text()
        if path.suffix == ".pyx":
            assert "import vmm" not in src and "from vmm" not in src, path
            continue
        for node in ast.walk(ast.parse(src)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            assert not any(n == "vmm" or n.startswith("vmm.") for n in names), f"{path} imports {names}"


def test_cmdline_word():
    assert cmdline_device(0xD0000000, 5) == "virtio_mmio.device=4K@0xd0000000:5"


def test_whole_device_snapshot(memory, interrupt, loop, queue_cls):
    t = MmioTransport(RngDevice(), memory, interrupt, loop)
    d = MockDriver(t, memory, queue_size=8)
    state = snapshot.save(t)
    t.close()
    t2 = snapshot.restore(state, memory, interrupt, loop)
    try:
        assert snapshot.save(t2) == state
        h = d.queues[0].add([], [8])
        t2.write(0x50, 4, 0)
        loop.run_once()
        assert d.queues[0].get_used() == [(h, 8)]
    finally:
        t2.close()

"""The PIO/MMIO bus: the pure-Python lookup and the C FastBus agree; overlaps are refused."""
from __future__ import annotations

import random

import pytest

from vmm.bus import Bus, BusError, mmio_bus, pio_bus
from vmm._fast.runloop import KIND_C, KIND_CONST, KIND_PYTHON, FastBus, ScratchPort


class Recorder:
    def __init__(self):
        self.log = []

    def read(self, offset, size):
        self.log.append(("r", offset, size))
        return 0xAABBCCDD_11223344

    def write(self, offset, size, value):
        self.log.append(("w", offset, size, value))


def test_register_lookup_and_offsets():
    bus = pio_bus()
    a, b = Recorder(), Recorder()
    bus.register(0x3F8, 8, a)
    bus.register(0x60, 1, b)
    bus.register_constant(0x80, 1, 0)
    assert bus.lookup(0x3F8) == (0x3F8, a)
    assert bus.lookup(0x3FF) == (0x3F8, a)
    assert bus.lookup(0x400) is None
    assert bus.lookup(0x3FE, 4) is None      # runs past the end of the range
    assert bus.lookup(0x80) == (0x80, None)
    bus.write(0x3FB, 1, 0x80)
    assert a.log == [("w", 3, 1, 0x80)]
    assert bus.read(0x3FD, 2) == 0x3344      # truncated to the access size
    assert bus.read(0x81, 1) == 0xFF         # nothing there: floats high
    assert bus.read(0x80, 4) == 0xFFFFFFFF   # but 0x80 is 1 byte wide
    assert bus.read(0x80, 1) == 0


@pytest.mark.parametrize("base,size", [(0x3F0, 9), (0x3FF, 1), (0x3F0, 0x20), (0x3FC, 2)])
def test_overlap_is_refused(base, size):
    bus = pio_bus()
    bus.register(0x3F8, 8, Recorder())
    with pytest.raises(BusError):
        bus.register(base, size, Recorder())


@pytest.mark.parametrize("base,size", [(0xFFFF, 2), (-1, 1), (0, 0)])
def test_bad_ranges(base, size):
    with pytest.raises(BusError):
        pio_bus().register(base, size, Recorder())


def test_unregister():
    bus = mmio_bus()
    bus.register(0xD000_0000, 0x1000, Recorder())
    bus.unregister(0xD000_0000)
    assert bus.lookup(0xD000_0000) is None
    with pytest.raises(BusError):
        bus.unregister(0xD000_0000)


def test_fast_bus_kinds():
    bus = pio_bus()
    bus.register(0x10, 4, Recorder())
    bus.register(0x20, 1, ScratchPort())
    bus.register_constant(0x30, 2, 7)
    fast = bus.fast
    assert isinstance(fast, FastBus)
    assert fast.lookup(0x12) == (0x10, KIND_PYTHON)
    assert fast.lookup(0x20) == (0x20, KIND_C)
    assert fast.lookup(0x31) == (0x30, KIND_CONST)
    assert fast.lookup(0x13, 2) is None


def test_python_twin_matches_c_lookup():
    rng = random.Random(7)
    bus = Bus("mmio")
    base = 0
    for _ in range(200):
        base += rng.randrange(1, 0x3000)
        size = rng.randrange(1, 0x2000)
        bus.register(base, size, Recorder())
        base += size
    fast = bus.fast
    # Registering after the FastBus exists keeps it in sync.
    bus.register(base + 0x10000, 0x100, Recorder())
    for _ in range(5000):
        addr = rng.randrange(0, base + 0x20000)
        size = rng.choice((1, 2, 4, 8))
        hit = bus.lookup(addr, size)
        assert fast.lookup(addr, size) == (None if hit is None else (hit[0], KIND_PYTHON))


def test_c_io_handler_must_be_a_capsule():
    class Bad(Recorder):
        def c_io_handler(self):
            return 42

    bus = pio_bus()
    bus.fast  # noqa: B018 (create the C side so registration reaches it)
    with pytest.raises(TypeError):
        bus.register(0x10, 1, Bad())
    assert bus.lookup(0x10) is None     # refused entirely, on both sides


def test_fastbus_in_a_collected_cycle_frees_cleanly():
    """A device referring back to its bus makes a cycle; the GC then clears the FastBus's
    Python attributes before __dealloc__, which must still free every table quietly."""
    import subprocess
    import sys

    code = """
from vmm.bus import pio_bus
class D:
    def read(self, offset, size): return 0
    def write(self, offset, size, value): pass
def make():
    bus = pio_bus()
    for i in range(3):
        d = D()
        bus.register(0x10 + i, 1, d)
        d.fast = bus.fast
for _ in range(5):
    make()
import gc
gc.collect()
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "Exception ignored" not in result.stderr and "TypeError" not in result.stderr, result.stderr

"""Fixtures for virtio tests: both queue implementations, fake memory, event loop."""
from __future__ import annotations

import pytest

from devices.virtio import _queue, queue_py
from devices.virtio.testing import Allocator, EventLoop, FakeGuestMemory, FakeInterrupt

QUEUE_IMPLS = {"cython": _queue.SplitQueue, "python": queue_py.SplitQueue}


@pytest.fixture(params=sorted(QUEUE_IMPLS))
def queue_cls(request, monkeypatch):
    """Each test using this runs against the compiled queue and its Python twin; the
    transport is patched so devices built in the test use the same implementation."""
    cls = QUEUE_IMPLS[request.param]
    monkeypatch.setattr("devices.virtio.mmio.SplitQueue", cls)
    return cls


@pytest.fixture
def memory():
    return FakeGuestMemory(4 << 20)


@pytest.fixture
def alloc(memory):
    return Allocator(0x1000, memory.size)


@pytest.fixture
def interrupt():
    return FakeInterrupt()


@pytest.fixture
def loop():
    return EventLoop()

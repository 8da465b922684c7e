"""The tiny test guest (tests/worker/tinyguest.py) with a clock on its first exit, for
the real-worker start benchmark (benchmarks/kvm/test_worker_start.py).

The guest's first instruction sequence writes its greeting to port 0x3f8, so the
first console byte arrives a few guest instructions after the first KVM_RUN. Before
passing that byte on, this factory writes one line `@first-exit <CLOCK_MONOTONIC s>`
to the console; the benchmark reads it back from the machine's console.log. The
clock is shared with the parent: the jail makes no time namespace.
"""
from __future__ import annotations

import time

from tests.worker.tinyguest import TinyGuest


def create(config, console, events) -> TinyGuest:
    first = [True]

    def stamped(data: bytes) -> None:
        if first[0]:
            first[0] = False
            console(b"@first-exit %.6f\n" % time.monotonic())
        console(data)

    return TinyGuest(config, stamped, events)

"""The worker's event loop: readers/writers on fds, timers, and calls from other threads.

Small on purpose (selectors + a wake-up pipe). A failing callback is logged to
stderr (worker.log) and the loop goes on: one bad request must not take the VM down. It also satisfies
`devices.interfaces.EventRegistry`, so devices can register their fds with it. Other
threads (vCPU threads, the machine's exit waiter) never touch loop state: they hand work
over with `call_soon_threadsafe`.
"""
from __future__ import annotations

import collections
import heapq
import itertools
import os
import selectors
import threading
import time

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~4 ms of import time; annotations here are strings
    from typing import Callable

    Callback = Callable[[], None]


class Timer:
    """A pending `call_later`; `cancel()` makes it a no-op."""

    __slots__ = ("when", "fn", "cancelled")

    def __init__(self, when: float, fn: Callback) -> None:
        self.when, self.fn, self.cancelled = when, fn, False

    def cancel(self) -> None:
        self.cancelled = True


class Loop:
    def __init__(self) -> None:
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._pending: collections.deque[Callback] = collections.deque()
        self._lock = threading.Lock()
        self._timers: list[tuple[float, int, Timer]] = []
        self._seq = itertools.count()
        self._running = False
        self._thread: int | None = None  # the thread running the loop, once it runs
        self.add_reader(self._wake_r, self._drain_wake)

    # -- fds -----------------------------------------------------------------------------

    def _set(self, fd: int, reader: Callback | None | bool, writer: Callback | None | bool) -> None:
        """Set (callable), clear (None) or keep (False) the reader / writer of `fd`.

        From another thread (a device activated on a vCPU thread) the change is handed to
        the loop thread, which alone touches the selector."""
        if self._thread is not None and threading.get_ident() != self._thread:
            self.call_soon_threadsafe(lambda: self._set(fd, reader, writer))
            return
        try:
            key = self._sel.get_key(fd)
            old_r, old_w = key.data
        except KeyError:
            key, old_r, old_w = None, None, None
        r = old_r if reader is False else reader
        w = old_w if writer is False else writer
        mask = (selectors.EVENT_READ if r else 0) | (selectors.EVENT_WRITE if w else 0)
        if key is None and mask:
            self._sel.register(fd, mask, (r, w))
        elif key is not None and not mask:
            self._sel.unregister(fd)
        elif key is not None:
            self._sel.modify(fd, mask, (r, w))

    def add_reader(self, fd: int, callback: Callback) -> None:
        self._set(fd, callback, False)

    def remove_reader(self, fd: int) -> None:
        self._set(fd, None, False)

    def add_writer(self, fd: int, callback: Callback) -> None:
        self._set(fd, False, callback)

    def remove_writer(self, fd: int) -> None:
        self._set(fd, False, None)

    # -- scheduling ----------------------------------------------------------------------

    def call_soon_threadsafe(self, fn: Callback) -> None:
        with self._lock:
            self._pending.append(fn)
        try:
            os.write(self._wake_w, b"\0")
        except BlockingIOError:
            pass  # the pipe is full of wake-ups already

    def call_later(self, delay: float, fn: Callback) -> Timer:
        timer = Timer(time.monotonic() + delay, fn)
        heapq.heappush(self._timers, (timer.when, next(self._seq), timer))
        return timer

    def _drain_wake(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    # -- running -------------------------------------------------------------------------

    def stop(self) -> None:
        self._running = False

    def run(self) -> None:
        self._running = True
        self._thread = threading.get_ident()
        while self._running:
            timeout = None
            if self._timers:
                timeout = max(0.0, self._timers[0][0] - time.monotonic())
            with self._lock:
                if self._pending:
                    timeout = 0
            for key, events in self._sel.select(timeout):
                reader, writer = key.data
                if events & selectors.EVENT_READ and reader:
                    _call(reader)
                if events & selectors.EVENT_WRITE and writer and self._still(key.fd, writer):
                    _call(writer)
            self._run_pending()
            self._run_timers()

    def _still(self, fd: int, writer: Callback) -> bool:
        """The reader may have closed or replaced the fd's writer in the same round."""
        try:
            return self._sel.get_key(fd).data[1] is writer
        except KeyError:
            return False

    def _run_pending(self) -> None:
        with self._lock:
            batch, self._pending = self._pending, collections.deque()
        for fn in batch:
            _call(fn)

    def _run_timers(self) -> None:
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            _, _, timer = heapq.heappop(self._timers)
            if not timer.cancelled:
                _call(timer.fn)

    def close(self) -> None:
        self._sel.close()
        os.close(self._wake_r)
        os.close(self._wake_w)


def _call(fn: Callback) -> None:
    """Run one callback; a bug in one must not end the loop (and with it the VM)."""
    try:
        fn()
    except Exception:
        import sys
        import traceback

        print("worker loop: a callback failed (the VM runs on):", file=sys.stderr)
        traceback.print_exc()

"""The worker's event loop: fds, timers, calls from other threads."""
from __future__ import annotations

import os
import threading
import time

from vmm.worker.loop import Loop


def test_reader_timer_and_threadsafe_call():
    loop = Loop()
    r, w = os.pipe()
    seen = []

    def on_read():
        seen.append(os.read(r, 100))
        loop.remove_reader(r)

    loop.add_reader(r, on_read)
    os.write(w, b"x")
    cancelled = loop.call_later(0.01, lambda: seen.append("cancelled"))
    cancelled.cancel()
    loop.call_later(0.02, lambda: seen.append("timer"))
    threading.Thread(target=lambda: (time.sleep(0.05), loop.call_soon_threadsafe(loop.stop))).start()
    t0 = time.monotonic()
    loop.run()
    assert seen == [b"x", "timer"]
    assert time.monotonic() - t0 < 2
    loop.close()
    os.close(r)
    os.close(w)


def test_reader_and_writer_on_one_fd():
    import socket

    loop = Loop()
    a, b = socket.socketpair()
    events = []
    loop.add_writer(a.fileno(), lambda: (events.append("w"), loop.remove_writer(a.fileno())))
    loop.add_reader(a.fileno(), lambda: (events.append(a.recv(10)), loop.stop()))
    b.sendall(b"hi")
    loop.run()
    assert "w" in events and b"hi" in events
    loop.close()


def test_a_failing_callback_does_not_end_the_loop(capfd):
    loop = Loop()
    seen = []
    loop.call_later(0, lambda: 1 / 0)
    loop.call_later(0.01, lambda: (seen.append("after"), loop.stop()))
    loop.run()
    assert seen == ["after"]
    assert "ZeroDivisionError" in capfd.readouterr().err
    loop.close()


def test_reader_added_from_another_thread():
    loop = Loop()
    r, w = os.pipe()
    got = []
    t = threading.Thread(target=loop.run)
    t.start()
    adder = threading.Thread(target=lambda: loop.add_reader(r, lambda: (got.append(os.read(r, 10)), loop.stop())))
    adder.start()
    adder.join()
    os.write(w, b"z")
    t.join(5)
    assert got == [b"z"] and not t.is_alive()
    loop.close()
    os.close(r)
    os.close(w)

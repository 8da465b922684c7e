"""One benchmark guest as a process (`mm boot` or QEMU microvm), its console watched.

    vm = GuestProcess("mm", argv, prefix=("ip", "netns", "exec", "ns"))
    vm.wait_for("MM-BENCH-READY", timeout=120)   # seconds since spawn
    vm.send(b"done\\n")                            # a line on the guest's serial console
    rc = vm.finish(timeout=60)                     # killed (rc None) if it does not exit
    vm.lines("MM-FIO-RANDREAD ")

Both VMMs take the guest's ttyS0 on stdin/stdout (`mm boot` forwards a non-terminal stdin;
QEMU has `-serial stdio`), so the harness drives either the same way.
"""
from __future__ import annotations

import os
import signal
import subprocess
import threading
import time


class BenchError(RuntimeError):
    """A benchmark run went wrong (guest did not come up, a tool failed); says which."""


class GuestProcess:
    def __init__(self, name: str, argv: list[str], prefix: tuple[str, ...] = (), env: dict | None = None) -> None:
        self.name = name
        self.argv = [*prefix, *argv]
        self.console = bytearray()
        self._cond = threading.Condition()
        self.start = time.monotonic()
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                                     start_new_session=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        fd = self.proc.stdout.fileno()
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                chunk = b""
            with self._cond:
                if not chunk:
                    self._cond.notify_all()
                    return
                self.console += chunk
                self._cond.notify_all()

    def wait_for(self, marker: str, timeout: float) -> float:
        """Seconds from spawn until `marker` appeared on the console."""
        want = marker.encode()
        deadline = time.monotonic() + timeout
        with self._cond:
            while want not in self.console:
                left = deadline - time.monotonic()
                if left <= 0 or (not self._reader.is_alive() and want not in self.console):
                    tail = self.console[-3000:].decode(errors="replace")
                    why = "exited" if self.proc.poll() is not None else f"no {marker!r} after {timeout:.0f} s"
                    raise BenchError(f"{self.name}: {why}; console tail:\n{tail}")
                self._cond.wait(min(left, 0.5))
        return time.monotonic() - self.start

    def send(self, data: bytes) -> None:
        try:
            self.proc.stdin.write(data)
            self.proc.stdin.flush()
        except OSError as e:
            raise BenchError(f"{self.name}: cannot write to the guest console: {e}") from None

    def finish(self, timeout: float) -> int | None:
        """Wait for exit; kill the process group after `timeout`. The exit code, or None if killed."""
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            rc = None
        self._reader.join(5)
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass
        return rc

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.finish(10)

    def text(self) -> str:
        with self._cond:
            return self.console.decode(errors="replace")

    def lines(self, tag: str) -> list[str]:
        """Console lines containing `tag`, from the tag on."""
        return [ln[ln.index(tag):].strip() for ln in self.text().splitlines() if tag in ln]

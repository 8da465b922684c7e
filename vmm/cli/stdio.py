"""The terminal side of an attached workload or exec: the CLI's stdin, stdout and
stderr wired to an agent stream (`vmm.guest.agent_client.Exec`), as `docker run` /
`docker exec` wire them.

    code = relay(ex, stdin=True, tty=sys.stdin.isatty())

- stdout and stderr frames go to fds 1 and 2; the EXIT frame's code is returned;
- with `stdin`, fd 0 is pumped into STDIN frames from a thread, EOF sent as STDIN_EOF;
- with `tty` (and fd 0 a terminal), the terminal is put in raw mode for the duration
  and its size is sent as RESIZE at once and on every SIGWINCH;
- SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 reaching the CLI are
  forwarded to the process (Docker's sig-proxy); the third SIGINT calls `on_force()`
  (e.g. kill the VM) so a workload that ignores signals cannot hold the terminal.
"""
from __future__ import annotations

import os
import signal
import threading

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~40 ms of `mm run` start-up in the lab (tests/unit/cli/test_run_imports.py)
    from typing import Callable

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
FORCE_AFTER = 3


def terminal_size(fd: int = 0) -> tuple[int, int] | None:
    """(rows, cols) of the terminal on `fd`, or None when it is not a terminal."""
    try:
        size = os.get_terminal_size(fd)
    except OSError:
        return None
    return size.lines, size.columns


class _RawTerminal:
    def __init__(self, fd: int) -> None:
        self.fd, self.saved = fd, None

    def __enter__(self):
        import termios
        import tty

        try:
            self.saved = termios.tcgetattr(self.fd)
            tty.setraw(self.fd)
        except termios.error:
            self.saved = None
        return self

    def __exit__(self, *exc) -> None:
        if self.saved is not None:
            import termios

            termios.tcsetattr(self.fd, termios.TCSADRAIN, self.saved)


def _pump_stdin(ex, in_fd: int) -> None:
    from vmm.errors import MMError

    try:
        while True:
            try:
                data = os.read(in_fd, 65536)
            except OSError:
                data = b""
            if not data:
                ex.close_stdin()
                return
            ex.write(data)
    except MMError:
        return  # the stream ended under us: the main thread reports how


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except BrokenPipeError:
            return  # our reader went away (`| head`): keep draining, as docker does
        view = view[n:]


def relay(ex, *, stdin: bool, tty: bool, in_fd: int = 0, out_fd: int = 1, err_fd: int = 2,
          on_force: Callable[[], None] | None = None) -> int:
    """Run the stream to its end; the process's exit code (128+N for signal N)."""
    from contextlib import nullcontext

    raw = tty and stdin and os.isatty(in_fd)
    interrupts = []

    def forward(signum, frame) -> None:
        if signum == signal.SIGINT:
            interrupts.append(signum)
            if len(interrupts) >= FORCE_AFTER and on_force is not None:
                on_force()
                return
        try:
            ex.kill(signum)
        except Exception:
            pass  # the stream is ending already

    def winch(signum, frame) -> None:
        size = terminal_size(in_fd)
        if size:
            try:
                ex.resize(*size)
            except Exception:
                pass

    main = threading.current_thread() is threading.main_thread()
    old = {}
    if main:
        for sig in FORWARDED:
            old[sig] = signal.signal(sig, forward)
        if tty:
            old[signal.SIGWINCH] = signal.signal(signal.SIGWINCH, winch)
    try:
        with _RawTerminal(in_fd) if raw else nullcontext():
            if tty:
                winch(signal.SIGWINCH, None)
            if stdin:
                threading.Thread(target=_pump_stdin, args=(ex, in_fd), name="stdin", daemon=True).start()
            for stream, data in ex.output():
                _write_all(out_fd if stream == "stdout" else err_fd, data)
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
    return ex.exit_code if ex.exit_code is not None else 1

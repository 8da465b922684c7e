"""`mm logs` (the console log, `-f` to follow, `--tail N`) and `mm console` (attach to
the guest console; Ctrl-] detaches)."""
from __future__ import annotations

import os
import sys

import typer

DETACH_KEY = b"\x1d"  # Ctrl-]


def tail_bytes(path, lines: int | None) -> bytes:
    """The last `lines` lines of a file (all of it for None), without reading a huge log whole."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return b""
    with f:
        if lines is None:
            return f.read()
        if lines <= 0:
            return b""
        end = f.seek(0, os.SEEK_END)
        pos, data = end, b""
        while pos > 0 and data.count(b"\n") <= lines:
            step = min(65536, pos)
            pos -= step
            f.seek(pos)
            data = f.read(step) + data
        kept = data.splitlines(keepends=True)[-lines:]
        return b"".join(kept)


def follow(path, is_live, out, poll: float = 0.1) -> None:
    """Copy what is appended to `path` to `out` until `is_live()` turns false."""
    import time

    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        while True:
            chunk = f.read(65536)
            if chunk:
                out.write(chunk)
                out.flush()
                continue
            if not is_live():
                out.write(f.read())
                out.flush()
                return
            time.sleep(poll)


def register(app: typer.Typer) -> None:
    @app.command("logs")
    def logs(
        name: str = typer.Argument(..., help="machine name or id"),
        follow_: bool = typer.Option(False, "-f", "--follow", help="keep printing new output"),
        tail: str = typer.Option("all", "-n", "--tail", help="number of lines from the end, or `all`"),
    ) -> None:
        """Print what a machine wrote to its console."""
        from vmm.errors import UsageError
        from vmm.machines.db import open_control
        from vmm.machines.states import LIVE

        if tail != "all" and not (tail.isdigit()):
            raise UsageError(f"--tail must be a number or `all`, not {tail!r}")
        c = open_control()
        rec = c.find(name)
        path = c.paths(rec).console_log
        out = sys.stdout.buffer
        out.write(tail_bytes(path, None if tail == "all" else int(tail)))
        out.flush()
        if follow_ and rec.state in LIVE and path.exists():
            follow(path, lambda: c.machines.reconcile(c.machines.get(rec.id)).state in LIVE, out)

    @app.command("console")
    def console(name: str = typer.Argument(..., help="machine name or id")) -> None:
        """Attach to a machine's console (keystrokes go to the guest); Ctrl-] detaches."""
        from vmm.machines.db import open_control
        from vmm.machines.states import State

        c = open_control()
        rec = c._live(name, State.RUNNING, State.PAUSED)
        sock = c.client(rec).console()
        print(f"attached to {rec.name}; Ctrl-] detaches", file=sys.stderr)
        attach(sock, sys.stdin.fileno(), sys.stdout.fileno())


def attach(sock, in_fd: int, out_fd: int) -> None:
    """Shuttle bytes between the terminal and the console stream until Ctrl-] or EOF."""
    import select
    import termios
    import tty

    saved = None
    if os.isatty(in_fd):
        saved = termios.tcgetattr(in_fd)
        tty.setraw(in_fd)
    try:
        while True:
            ready, _, _ = select.select([sock, in_fd], [], [])
            if sock in ready:
                data = sock.recv(65536)
                if not data:
                    break
                os.write(out_fd, data)
            if in_fd in ready:
                data = os.read(in_fd, 1024)
                if not data or DETACH_KEY in data:
                    head = data.split(DETACH_KEY, 1)[0]
                    if head:
                        sock.sendall(head)
                    break
                sock.sendall(data)
    finally:
        if saved is not None:
            termios.tcsetattr(in_fd, termios.TCSADRAIN, saved)
        sock.close()

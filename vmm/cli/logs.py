"""`mm logs` (the workload's output, `-f` to follow, `--tail N`, `--console` for the
guest's serial console instead) and `mm console` (attach to the guest console; Ctrl-]
detaches).

Machines whose workload runs on an attach stream keep its output as agent frames in
output.log (vmm/worker/workload.py): `mm logs` writes stdout frames to stdout and
stderr frames to stderr, as `docker logs` does. Others (a workload on the console)
show console.log.
"""
from __future__ import annotations

import os
import sys

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


def output_frames(data: bytes) -> list[tuple[int, bytes]]:
    """(fd, bytes) for each STDOUT (1) / STDERR (2) frame in output.log bytes."""
    from vmm.guest.protocol import Frame
    from vmm.worker.workload import FrameSplitter

    fds = {Frame.STDOUT: 1, Frame.STDERR: 2}
    return [(fds[t], p) for t, p in FrameSplitter().feed(data) if t in fds]


def tail_frames(frames: list[tuple[int, bytes]], lines: int | None) -> list[tuple[int, bytes]]:
    """The frames (cut where needed) holding the last `lines` lines of both streams
    together, as `tail -n` counts them; all of them for None."""
    if lines is None:
        return frames
    combined = b"".join(data for _, data in frames)
    kept = b"".join(combined.splitlines(keepends=True)[-lines:]) if lines > 0 else b""
    cut, pos, out = len(combined) - len(kept), 0, []
    for fd, data in frames:
        end = pos + len(data)
        if end > cut:
            out.append((fd, data[max(0, cut - pos):]))
        pos = end
    return out


def _write_frames(frames) -> None:
    for fd, data in frames:
        stream = sys.stdout.buffer if fd == 1 else sys.stderr.buffer
        stream.write(data)
        stream.flush()


def follow_frames(path, is_live, poll: float = 0.1) -> None:
    """Print frames appended to output.log until `is_live()` turns false."""
    import time

    from vmm.guest.protocol import Frame
    from vmm.worker.workload import FrameSplitter

    splitter = FrameSplitter()
    fds = {Frame.STDOUT: 1, Frame.STDERR: 2}
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        while True:
            chunk = f.read(65536)
            if chunk:
                _write_frames([(fds[t], p) for t, p in splitter.feed(chunk) if t in fds])
                continue
            if not is_live():
                _write_frames([(fds[t], p) for t, p in splitter.feed(f.read()) if t in fds])
                return
            time.sleep(poll)


def show_logs(name: str, follow_: bool = False, tail: str = "all", console_: bool = False) -> int:
    """Print a machine's output: its workload's stdout and stderr (or its console)."""
    from vmm.errors import UsageError
    from vmm.machines.db import open_control
    from vmm.machines.states import LIVE

    if tail != "all" and not tail.isdigit():
        raise UsageError(f"--tail must be a number or `all`, not {tail!r}")
    lines = None if tail == "all" else int(tail)
    c = open_control()
    rec = c.find(name)
    is_live = lambda: c.machines.reconcile(c.machines.get(rec.id)).state in LIVE  # noqa: E731
    worker = rec.config.get("worker") or {}
    if worker.get("attach_port") is not None and not console_:
        path = c.paths(rec).output_log
        _write_frames(tail_frames(output_frames(path.read_bytes() if path.exists() else b""), lines))
        if follow_ and rec.state in LIVE and path.exists():
            follow_frames(path, is_live)
        return 0
    path = c.paths(rec).console_log
    out = sys.stdout.buffer
    out.write(tail_bytes(path, lines))
    out.flush()
    if follow_ and rec.state in LIVE and path.exists():
        follow(path, is_live, out)
    return 0


def attach_console(name: str) -> int:
    """Attach to a machine's console (keystrokes go to the guest); Ctrl-] detaches."""
    from vmm.machines.db import open_control
    from vmm.machines.states import State

    c = open_control()
    rec = c._live(name, State.RUNNING, State.PAUSED)
    sock = c.client(rec).console()
    print(f"attached to {rec.name}; Ctrl-] detaches", file=sys.stderr)
    attach(sock, sys.stdin.fileno(), sys.stdout.fileno())
    return 0


def _one_machine(g, args: list[str]):
    from vmm.cli.fastargs import parse
    from vmm.errors import UsageError

    parsed = parse(g, args)
    if parsed is None:
        return None
    opts, names = parsed
    if len(names) != 1:
        raise UsageError(f"mm {g.command} takes exactly one machine name or id", g.hint)
    return opts, names[0]


def fast_logs(args: list[str]) -> int | None:
    """`mm logs` without typer (vmm/cli/fastargs.py); None for --help."""
    from vmm.cli.fastargs import Grammar

    g = Grammar("logs", flags={"-f": "follow_", "--follow": "follow_", "--console": "console_"},
                values={"-n": "tail", "--tail": "tail"})
    parsed = _one_machine(g, args)
    return None if parsed is None else show_logs(parsed[1], **parsed[0])


def fast_console(args: list[str]) -> int | None:
    from vmm.cli.fastargs import Grammar

    parsed = _one_machine(Grammar("console"), args)
    return None if parsed is None else attach_console(parsed[1])


def register(app) -> None:
    import typer

    @app.command("logs")
    def logs(
        name: str = typer.Argument(..., help="machine name or id"),
        follow_: bool = typer.Option(False, "-f", "--follow", help="keep printing new output"),
        tail: str = typer.Option("all", "-n", "--tail", help="number of lines from the end, or `all`"),
        console_: bool = typer.Option(False, "--console", help="the guest's serial console (kernel messages)"),
    ) -> None:
        """Print a machine's output: its workload's stdout and stderr (or its console)."""
        show_logs(name, follow_, tail, console_)

    @app.command("console")
    def console(name: str = typer.Argument(..., help="machine name or id")) -> None:
        """Attach to a machine's console (keystrokes go to the guest); Ctrl-] detaches."""
        attach_console(name)


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

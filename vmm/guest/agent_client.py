"""The host's client of the guest exec agent (mm-init's agent; guest/PROTOCOL.md).

`AgentClient(target)` opens one stream per request: `target` is the Unix socket of an
agent running on the host (tests), the VM's vsock Unix socket together with
`vsock_port=` (Firecracker's host model: `CONNECT <port>\\n` -> `OK <hostport>\\n`),
or any callable returning a connected socket. It offers `exec()` (collects output
into an ExecResult), `start()` (a streaming Exec: write stdin, resize, signal,
iterate output), `copy_in`/`copy_out` (tar streams; `copy_in_archive`/
`copy_out_archive` hand the raw archive to a callback) and `shutdown`.
"""
from __future__ import annotations

import io
import os
import signal as _signal
import socket
import struct
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

from vmm.guest.errors import AgentError, AgentProtocolError
from vmm.plain import REQUIRED, Frozen
from vmm.guest.protocol import CHUNK, HELLO, Frame, FrameReader, encode, records

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~40 ms of `mm run` start-up in the lab (tests/unit/cli/test_run_imports.py)
    from typing import BinaryIO

Connector = Callable[[], socket.socket]


# A vmm.plain.Frozen record, not a dataclass: `mm run`'s path imports no dataclasses (and so
# no inspect, ast, dis, tokenize), a second of start-up under the lab's emulation.
class ExecResult(Frozen):
    FIELDS = {
        "exit_code": REQUIRED,  # 0-255, or 128+N when killed by signal N
        "signal": REQUIRED,     # N when killed by a signal, else 0
        "stdout": REQUIRED,     # bytes
        "stderr": REQUIRED,     # bytes
    }


def vsock_connect(uds_path: str | os.PathLike, port: int, timeout: float | None = 10.0) -> socket.socket:
    """Connects to guest `port` through a Firecracker-style vsock Unix socket."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(os.fspath(uds_path))
        sock.sendall(b"CONNECT %d\n" % port)
        line = b""
        while not line.endswith(b"\n") and len(line) < 64:
            ch = sock.recv(1)
            if not ch:
                break
            line += ch
    except OSError as e:
        sock.close()
        raise AgentError(f"cannot reach the guest's vsock port {port} via {uds_path}: {e}") from e
    if not line.startswith(b"OK "):
        sock.close()
        raise AgentError(f"the VM's vsock refused port {port}: {line.strip()!r}",
                         hint="the guest agent may not be up yet, or the VM has no vsock device")
    sock.settimeout(None)
    return sock


class Exec:
    """One running command: stdin in, stdout/stderr out, then the exit status."""

    def __init__(self, sock: socket.socket, reader: FrameReader, pid: int) -> None:
        self.sock = sock
        self.pid = pid
        self._reader = reader
        self._send_lock = threading.Lock()
        self.exit_code: int | None = None
        self.signal: int = 0

    def _send(self, ftype: int, payload: bytes = b"") -> None:
        with self._send_lock:
            try:
                self.sock.sendall(encode(ftype, payload))
            except OSError as e:
                raise AgentError(f"the agent stream broke: {e}") from e

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        for i in range(0, len(view), CHUNK):
            self._send(Frame.STDIN, bytes(view[i:i + CHUNK]))

    def close_stdin(self) -> None:
        self._send(Frame.STDIN_EOF)

    def resize(self, rows: int, cols: int) -> None:
        self._send(Frame.RESIZE, struct.pack("<HH", rows, cols))

    def kill(self, sig: int = _signal.SIGKILL) -> None:
        self._send(Frame.SIGNAL, struct.pack("<I", int(sig)))

    def output(self) -> Iterator[tuple[str, bytes]]:
        """Yields ("stdout"|"stderr", data) until the command exits."""
        while self.exit_code is None:
            frame = self._reader.read()
            if frame is None:
                raise AgentError("the agent closed the stream before the command's exit status",
                                 hint="the agent or the VM may have died")
            ftype, payload = frame
            if ftype == Frame.STDOUT:
                yield "stdout", payload
            elif ftype == Frame.STDERR:
                yield "stderr", payload
            elif ftype == Frame.EXIT and len(payload) == 8:
                self.exit_code, self.signal = struct.unpack("<iI", payload)
            elif ftype == Frame.ERROR:
                raise AgentError(payload.decode(errors="replace"))
            else:
                raise AgentProtocolError(f"unexpected frame 0x{ftype:02x} during exec")

    def wait(self) -> int:
        for _ in self.output():
            pass
        assert self.exit_code is not None
        return self.exit_code

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Exec:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _env_records(env: Mapping[str, str] | Iterable[str] | None) -> list[tuple[str, str]]:
    if env is None:
        return []
    items = [f"{k}={v}" for k, v in env.items()] if isinstance(env, Mapping) else list(env)
    return [("env", kv) for kv in items]


class AgentClient:
    """Talks to one guest's agent; every request is its own connection."""

    def __init__(self, target: str | os.PathLike | Connector, *, vsock_port: int | None = None,
                 timeout: float | None = 30.0) -> None:
        if callable(target):
            self._connect: Connector = target
        elif vsock_port is not None:
            self._connect = lambda: vsock_connect(target, vsock_port, timeout)
        else:
            path = os.fspath(target)

            def unix() -> socket.socket:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    s.connect(path)
                except OSError as e:
                    s.close()
                    raise AgentError(f"cannot connect to the agent at {path}: {e}") from e
                return s

            self._connect = unix

    def _open(self, ftype: int, payload: bytes, extra: bytes = b"") -> tuple[socket.socket, FrameReader]:
        sock = self._connect()
        reader = FrameReader(sock)
        try:
            # Pipelined: the request (and any first frames) go with HELLO, one round trip.
            sock.sendall(encode(Frame.HELLO, HELLO) + encode(ftype, payload) + extra)
            frame = reader.read()
        except OSError as e:
            sock.close()
            raise AgentError(f"the agent stream broke during the handshake: {e}") from e
        if frame is None or frame[0] != Frame.HELLO or frame[1] != HELLO:
            sock.close()
            if frame and frame[0] == Frame.ERROR:
                raise AgentProtocolError(frame[1].decode(errors="replace"))
            raise AgentProtocolError(f"the agent did not answer HELLO ({frame!r:.80})")
        return sock, reader

    def start(self, argv: list[str], *, env: Mapping[str, str] | Iterable[str] | None = None,
              cwd: str | None = None, user: str | None = None, tty: bool = False,
              rows: int = 24, cols: int = 80, stdin_eof: bool = False) -> Exec:
        """Starts argv; stdin_eof=True closes its stdin right away (no input)."""
        if not argv:
            raise AgentError("exec needs a command")
        recs = [("arg", a) for a in argv] + _env_records(env)
        if cwd:
            recs.append(("cwd", cwd))
        if user:
            recs.append(("user", user))
        if tty:
            recs += [("tty", "1"), ("rows", str(rows)), ("cols", str(cols))]
        sock, reader = self._open(Frame.EXEC, records(recs), encode(Frame.STDIN_EOF) if stdin_eof else b"")
        frame = reader.read()
        if frame and frame[0] == Frame.STARTED and len(frame[1]) == 4:
            return Exec(sock, reader, struct.unpack("<I", frame[1])[0])
        sock.close()
        if frame and frame[0] == Frame.ERROR:
            raise AgentError(f"exec {argv[0]}: {frame[1].decode(errors='replace')}")
        raise AgentProtocolError(f"expected STARTED, got {frame!r:.80}")

    def attach(self) -> Exec:
        """Attaches to the workload of a VM booted with stdio=vsock (connect this
        client to the attach port): its stdio and exit status, as an Exec."""
        sock = self._connect()
        reader = FrameReader(sock)
        try:
            sock.sendall(encode(Frame.HELLO, HELLO))
            hello, started = reader.read(), reader.read()
        except OSError as e:
            sock.close()
            raise AgentError(f"attaching to the workload failed: {e}") from e
        if hello == (Frame.HELLO, HELLO) and started and started[0] == Frame.STARTED and len(started[1]) == 4:
            return Exec(sock, reader, struct.unpack("<I", started[1])[0])
        sock.close()
        if started and started[0] == Frame.ERROR:
            raise AgentError(f"the workload did not start: {started[1].decode(errors='replace')}")
        raise AgentProtocolError(f"attach: expected HELLO and STARTED, got {hello!r:.60} {started!r:.60}")

    def exec(self, argv: list[str], *, env: Mapping[str, str] | Iterable[str] | None = None,
             cwd: str | None = None, user: str | None = None, tty: bool = False,
             stdin: bytes | BinaryIO | None = None,
             on_stdout: Callable[[bytes], None] | None = None,
             on_stderr: Callable[[bytes], None] | None = None) -> ExecResult:
        """Runs argv to completion. Output goes to the callbacks if given (then it is
        not kept in the result), else it is collected."""
        out: list[bytes] = []
        err: list[bytes] = []
        with self.start(argv, env=env, cwd=cwd, user=user, tty=tty, stdin_eof=stdin is None) as ex:
            feeder = None
            if stdin is not None:
                feeder = threading.Thread(target=_feed, args=(ex, stdin), daemon=True)
                feeder.start()
            for kind, data in ex.output():
                if kind == "stdout":
                    on_stdout(data) if on_stdout else out.append(data)
                else:
                    on_stderr(data) if on_stderr else err.append(data)
            if feeder:
                feeder.join(timeout=1)
            assert ex.exit_code is not None
            return ExecResult(ex.exit_code, ex.signal, b"".join(out), b"".join(err))

    def copy_in(self, src: str | os.PathLike, dest_dir: str) -> None:
        """Copies a host file or directory into the guest directory dest_dir."""
        import tarfile

        src = Path(src)
        if not src.exists():
            raise AgentError(f"{src} does not exist")

        def write(stream: BinaryIO) -> None:
            with tarfile.open(fileobj=stream, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                tar.add(src, arcname=src.name)

        self.copy_in_archive(dest_dir, write)

    def copy_in_archive(self, dest_dir: str, write: Callable[[BinaryIO], None]) -> None:
        """COPY_IN: `write(stream)` writes a tar archive to `stream` (its bytes become
        DATA frames); the guest extracts it into dest_dir (created)."""
        sock, reader = self._open(Frame.COPY_IN, records([("path", dest_dir)]))
        with sock:
            try:
                write(_DataWriter(sock))
                sock.sendall(encode(Frame.DATA_EOF))
            except OSError as e:
                _raise_pending(reader, e)
            _expect_ok(reader, f"copy into {dest_dir}")

    def copy_out(self, src: str, dest_dir: str | os.PathLike) -> None:
        """Copies the guest path src into the host directory dest_dir."""
        import tarfile

        def read(stream: BinaryIO) -> None:
            try:
                with tarfile.open(fileobj=stream, mode="r|") as tar:
                    for member in tar:
                        check_member(member, src)
                        extract_member(tar, member, os.fspath(dest_dir), src)
            except tarfile.TarError as e:
                raise AgentError(f"copy out of {src}: bad archive from the guest: {e}") from e

        self.copy_out_archive(src, read)

    def copy_out_archive(self, src: str, read: Callable[[BinaryIO], None]) -> None:
        """COPY_OUT: `read(stream)` reads the guest's tar archive of src (the path under
        its base name) from `stream`; what it leaves unread is drained. An exception
        from `read` closes the stream at once (the agent stops archiving)."""
        sock, reader = self._open(Frame.COPY_OUT, records([("path", src)]))
        with sock:
            stream = _DataReader(reader)
            read(stream)
            stream.drain()
            _expect_ok(reader, f"copy out of {src}")

    def shutdown(self) -> None:
        """Asks the guest to stop its workload and power off (or the agent to exit)."""
        sock, reader = self._open(Frame.SHUTDOWN, b"")
        with sock:
            _expect_ok(reader, "shutdown")


def _feed(ex: Exec, stdin: bytes | BinaryIO) -> None:
    try:
        if isinstance(stdin, (bytes, bytearray, memoryview)):
            ex.write(bytes(stdin))
        else:
            while chunk := stdin.read(CHUNK):
                ex.write(chunk)
        ex.close_stdin()
    except AgentError:
        pass  # the command exited or the stream broke; output() reports which


def check_member(member, src: str) -> None:
    """A tarfile.TarInfo from the guest is untrusted: no name may be absolute or climb
    ('..'), nor may a hard link's source; only files, directories and links are accepted;
    the mode is reduced to permission bits. A symbolic link's target is kept as it is, as
    `docker cp` keeps it (Debian's /etc/os-release points to ../usr/lib/os-release):
    extract_member() refuses to write through one. (Python 3.11.2 has no extraction
    filters.)"""
    def unsafe(name: str) -> bool:
        return name.startswith("/") or ".." in Path(name).parts

    if unsafe(member.name) or (member.islnk() and unsafe(member.linkname)):
        raise AgentError(f"copy out of {src}: the guest sent an unsafe path {member.name!r}",
                         hint="absolute paths and '..' are refused in archives from a guest")
    if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
        raise AgentError(f"copy out of {src}: refusing special file {member.name!r}")
    member.mode &= 0o777


def extract_member(tar, member, root: str, src: str, numeric_owner: bool = False) -> None:
    """tar.extract() of a member check_member() passed, never through a symbolic link:
    the directory it lands in (and a hard link's source) must resolve inside `root`, so a
    link the archive made earlier ("d" -> /etc, then "d/passwd") cannot carry a write, or
    a hard link, out of the destination. A link already at the member's own path is
    replaced, not written through."""
    real_root = os.path.realpath(root)

    def inside(name: str) -> bool:
        parent = os.path.realpath(os.path.join(real_root, os.path.dirname(name)))
        return parent == real_root or parent.startswith(real_root + os.sep)

    if not inside(member.name) or (member.islnk() and not inside(member.linkname)):
        raise AgentError(f"copy out of {src}: the guest's archive writes {member.name!r} through a symbolic link",
                         hint="a link in the copy may point anywhere, but nothing is written through one")
    target = os.path.join(real_root, member.name)
    if not member.isdir() and os.path.islink(target):
        os.unlink(target)
    tar.extract(member, real_root, set_attrs=not member.issym(), numeric_owner=numeric_owner)


def _expect_ok(reader: FrameReader, what: str) -> None:
    frame = reader.read()
    if frame and frame[0] == Frame.OK:
        return
    if frame and frame[0] == Frame.ERROR:
        raise AgentError(f"{what}: {frame[1].decode(errors='replace')}")
    raise AgentProtocolError(f"{what}: expected OK, got {frame!r:.80}")


def _raise_pending(reader: FrameReader, cause: OSError) -> None:
    """The agent stopped reading: it usually said why in an ERROR frame first."""
    try:
        frame = reader.read()
    except (OSError, AgentError):
        frame = None
    if frame and frame[0] == Frame.ERROR:
        raise AgentError(frame[1].decode(errors="replace")) from cause
    raise AgentError(f"the agent stream broke: {cause}") from cause


class _DataWriter(io.RawIOBase):
    """A write-only file whose bytes become DATA frames."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:  # type: ignore[override]
        view = memoryview(data).cast("B")
        for i in range(0, len(view), CHUNK):
            self.sock.sendall(encode(Frame.DATA, bytes(view[i:i + CHUNK])))
        return len(view)


class _DataReader(io.RawIOBase):
    """A read-only file over DATA frames, ending at DATA_EOF."""

    def __init__(self, reader: FrameReader) -> None:
        self.reader = reader
        self.buf = memoryview(b"")
        self.eof = False

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[override]
        while not self.buf and not self.eof:
            frame = self.reader.read()
            if frame is None:
                raise AgentError("the agent closed the copy stream early")
            ftype, payload = frame
            if ftype == Frame.DATA:
                self.buf = memoryview(payload)
            elif ftype == Frame.DATA_EOF:
                self.eof = True
            elif ftype == Frame.ERROR:
                raise AgentError(payload.decode(errors="replace"))
            else:
                raise AgentProtocolError(f"unexpected frame 0x{ftype:02x} in a copy stream")
        n = min(len(b), len(self.buf))
        b[:n] = self.buf[:n]
        self.buf = self.buf[n:]
        return n

    def drain(self) -> None:
        while not self.eof:
            self.buf = memoryview(b"")
            self.readinto(bytearray(CHUNK))

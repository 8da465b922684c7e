"""Drives `mm exec -it MACHINE sh -c SCRIPT` on a pseudo-terminal, as a user at a
terminal would, and prints what happened as one JSON object (tests/e2e/test_exec.py runs
it on the guest host):

    python -m tests.e2e.exec_pty MM MACHINE

- the guest's `stty size` shows the size the terminal had when mm exec started;
- after the terminal is resized (the kernel sends mm exec SIGWINCH), it shows the new one;
- Ctrl-C typed in raw mode reaches the guest's terminal: its SIGINT interrupts a `sleep`
  there (the script's trap reports it) rather than killing mm exec;
- the command's exit status (7) is mm exec's.

A script rather than an interactive shell: busybox ash asks the terminal for the cursor
position and reads the answer from its input, which a bare pseudo-terminal never gives.
"""
from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import struct
import sys
import termios
import time

STEP_TIMEOUT = 120.0  # the lab under load answers slowly; nothing here is a timing check
SCRIPT = """
echo "size=$(stty size | tr ' ' x)"
while read line; do
  s=$(stty size | tr ' ' x); echo "size=$s"; [ "$s" = 40x120 ] && break
done
trap 'echo "interrupted-$((40+2))"' INT
echo sleeping; sleep 1000
echo "tty=$(tty)"
exit 7
"""


def set_size(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


class Terminal:
    def __init__(self, mm: str, machine: str) -> None:
        self.pid, self.fd = pty.fork()
        if self.pid == 0:
            set_size(0, 30, 100)
            os.execv(mm, [mm, "exec", "-it", machine, "sh", "-c", SCRIPT])
        self.seen = b""
        self.pos = 0  # output before this was matched by an earlier expect

    def send(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def expect(self, needle: str, resend: str | None = None) -> bool:
        """Waits for `needle` in the output after the previous match."""
        start = self.pos
        deadline = time.monotonic() + STEP_TIMEOUT
        last_send = time.monotonic()
        while needle.encode() not in self.seen[start:]:
            if time.monotonic() > deadline:
                return False
            if resend and time.monotonic() - last_send > 5:
                self.send(resend)  # a RESIZE travels apart from the keystrokes: ask again
                last_send = time.monotonic()
            ready, _, _ = select.select([self.fd], [], [], 1.0)
            if ready:
                try:
                    chunk = os.read(self.fd, 65536)
                except OSError:  # EIO: mm exec has exited
                    break
                if not chunk:
                    break
                self.seen += chunk
        found = self.seen.find(needle.encode(), start)
        if found < 0:
            return False
        self.pos = found + len(needle)
        return True

    def wait(self) -> int | None:
        deadline = time.monotonic() + STEP_TIMEOUT
        while time.monotonic() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                return os.waitstatus_to_exitcode(status)
            try:
                select.select([self.fd], [], [], 0.5)
                self.seen += os.read(self.fd, 65536)
            except OSError:
                time.sleep(0.2)
        return None


def main(argv: list[str]) -> int:
    mm, machine = argv
    t = Terminal(mm, machine)
    report: dict[str, object] = {"initial_size": t.expect("size=30x100")}
    set_size(t.fd, 40, 120)
    t.send("go\n")
    report["resized"] = t.expect("size=40x120", resend="go\n")
    report["sleeping"] = t.expect("sleeping")
    time.sleep(1)
    t.send("\x03")  # raw mode: a byte for the guest's terminal, which sends SIGINT there
    report["ctrl_c_reached_guest"] = t.expect("interrupted-42")
    report["tty"] = t.expect("tty=/dev/pts/")
    report["exit_status"] = t.wait()
    report["output_tail"] = t.seen[-600:].decode(errors="replace")
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

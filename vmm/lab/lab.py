"""`vmm.lab.Lab`: boot, reach and stop the lab (QEMU TCG with nested SVM).

Runtime files live in `state_dir()/lab/`: qemu.pid, lab.json (port, settings), serial.log,
qmp.sock and the per-boot initrd. The lab's own writable state directory is
`state_dir()/lab/guest-state`, which appears inside at the path of `state_dir()`, so `mm`
in the lab keeps its machines apart from the host's. Shares inside keep their host paths:
`/` (read-only), the checkout, the cache and `state_dir()/results` (writable).
"""
from __future__ import annotations

import fcntl
import json
import os
import secrets
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Callable

from vmm import paths
from vmm.lab import agent as wire
from vmm.lab.assets import Assets, require_prepared
from vmm.lab.errors import LabError, LabTimeout
from vmm.lab.initramfs import BootConfig, Share, config_archive
from vmm.lab.qemu import LabSettings, command_line, free_port, qmp_quit

BOOT_TIMEOUT = 300.0  # TCG on a loaded 2-core host can be slow; a healthy boot takes ~10 s
GUEST_PYTHON = "/usr/bin/python3"
TOKEN_NAME = "lab-agent.token"


def runtime_dir() -> Path:
    return paths.state_dir() / "lab"


def results_dir() -> Path:
    """A writable directory at the same path on the host and inside the lab."""
    return paths.state_dir() / "results"


def forwarded_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The host environment a command in the lab sees: MM_* and PATH, then `extra`."""
    env = {k: v for k, v in os.environ.items() if k.startswith("MM_") or k == "PATH"}
    env.update(extra or {})
    return env


def lab_shares() -> tuple[Share, ...]:
    guest_state = runtime_dir() / "guest-state"
    shares = [
        Share("host", Path("/"), writable=False, cache="loose"),
        # Loose-cached (imports are mostly 9p look-ups): kept current by vmm.lab.freshness.
        Share("repo", paths.REPO_ROOT, writable=True, cache="loose"),
        Share("cache", paths.cache_dir(), writable=True, cache="mmap"),
        Share("state", guest_state, writable=True, cache="mmap", guest_path=paths.state_dir()),
        Share("results", results_dir(), writable=True, cache="mmap"),
    ]
    venv = paths.REPO_ROOT / ".venv"
    if venv.is_dir():
        # Read-mostly and imported on every `mm`/pytest start: cached inside, refreshed like
        # the checkout when a pip install changes it (vmm.lab.freshness).
        shares.append(Share("venv", venv, writable=False, cache="loose"))
    return tuple(shares)


def code_refresh() -> dict:
    """The stamp of the host's code, for the agent to drop its caches of the loose-cached
    shares when it is new (vmm.lab.freshness)."""
    from vmm.lab.freshness import code_stamp, venv_stamp

    venv = paths.REPO_ROOT / ".venv"
    return {"stamp": code_stamp(paths.REPO_ROOT) + (venv_stamp(venv) if venv.is_dir() else "")}


class Lab:
    """One lab per state directory; every method may be called from any process."""

    def __init__(self, settings: LabSettings | None = None) -> None:
        self.settings = settings or LabSettings.from_env()
        self.dir = runtime_dir()

    # --- files
    @property
    def serial_log(self) -> Path:
        return self.dir / "serial.log"

    def _info(self) -> dict | None:
        try:
            return json.loads((self.dir / "lab.json").read_text())
        except (OSError, ValueError):
            return None

    def _check_checkout(self) -> None:
        """The lab shares one checkout (the `repo` share, at its host path): a command
        from another checkout would find that one's path missing or read-only inside."""
        theirs = (self._info() or {}).get("checkout")
        if theirs and theirs != str(paths.REPO_ROOT):
            raise LabError(
                f"the running lab serves the checkout {theirs}, not this one ({paths.REPO_ROOT})",
                "use that checkout's mm, stop the lab once its users are done (`mm lab down`), "
                "or give this checkout a private lab with its own MM_STATE")

    def _pid(self) -> int | None:
        try:
            pid = int((self.dir / "qemu.pid").read_text().strip())
        except (OSError, ValueError):
            return None
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read()
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            return None
        return pid if b"mm-lab" in cmd and state != "Z" else None

    def _token(self) -> str:
        return (self.dir / "guest-state" / TOKEN_NAME).read_text().strip()

    @contextmanager
    def _locked(self):
        paths.ensure(self.dir)
        with open(self.dir / "lock", "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            yield

    # --- state
    def is_running(self) -> bool:
        return self._pid() is not None

    def is_ready(self) -> bool:
        """Running and its agent has answered since this boot (no round trip to check)."""
        return bool((self._info() or {}).get("ready")) and self.is_running()

    def status(self) -> dict:
        from vmm.lab.assets import find_prepared

        assets = find_prepared()
        info = self._info() or {}
        pid = self._pid()
        out = {
            "prepared": assets is not None,
            "kernel": f"{assets.package} {assets.version}" if assets else None,
            "running": pid is not None,
            "pid": pid,
            "port": info.get("port") if pid else None,
            "memory_mib": info.get("memory_mib") if pid else None,
            "cpus": info.get("cpus") if pid else None,
            "serial_log": str(self.serial_log),
            "uptime": None,
        }
        if pid:
            try:
                out["uptime"] = self._request({"op": "ping"}, timeout=5.0)[2].get("uptime")
            except (OSError, LabError):
                out["reachable"] = False
        return out

    # --- sharing: several processes (test sessions, CLI execs) use one lab
    @contextmanager
    def lease(self):
        """Mark this process as using the lab until the block ends (see `session`)."""
        leases = paths.ensure(self.dir / "leases")
        mine = leases / f"{os.getpid()}-{secrets.token_hex(4)}"
        mine.write_text(str(os.getpid()))
        try:
            yield
        finally:
            mine.unlink(missing_ok=True)

    def _other_users(self) -> int:
        count = 0
        for f in (self.dir / "leases").glob("*"):
            try:
                pid = int(f.read_text())
                os.kill(pid, 0)
            except (OSError, ValueError):
                f.unlink(missing_ok=True)  # its process is gone
                continue
            count += 1
        return count

    @contextmanager
    def session(self):
        """Use the lab for a while (a test session): boot it if needed, and on exit stop it
        only if this session booted it and no other process is using it."""
        booted = not self.is_running()
        self.ensure_up()
        try:
            with self.lease():
                yield self
        finally:
            if booted and self._other_users() == 0:
                self.down()

    # --- lifecycle
    def ensure_up(self, timeout: float = BOOT_TIMEOUT) -> None:
        """Boot the lab unless it is running already; returns when commands can run."""
        with self._locked():
            if self.is_running():
                self._wait_ready(time.monotonic() + min(timeout, 60.0))
            else:
                self._boot(timeout)
            info = self._info() or {}
            info["ready"] = True
            (self.dir / "lab.json").write_text(json.dumps(info, indent=2))

    def _boot(self, timeout: float) -> None:
        assets = require_prepared()
        guest_state = paths.ensure(self.dir / "guest-state")
        paths.ensure(results_dir())
        for stale in ("qemu.pid", "lab.json", "qmp.sock"):
            (self.dir / stale).unlink(missing_ok=True)
        if self.serial_log.exists():
            self.serial_log.replace(self.dir / "serial.log.1")  # the previous boot's, for post-mortems
        token_file = guest_state / TOKEN_NAME
        fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(16))
        shares = lab_shares()
        initrd = self.dir / "initrd.cpio"
        cfg = BootConfig(
            shares=shares, python=GUEST_PYTHON, agent=Path(wire.__file__).resolve(),
            token_file=paths.state_dir() / TOKEN_NAME,  # the guest-state share, seen from inside
            kernel_version=assets.kernel_version, modules_dir=assets.modules_dir,
        )
        with open(initrd, "wb") as out:
            out.write(assets.initramfs.read_bytes())
            out.write(config_archive(cfg))
        port = free_port()
        argv = command_line(
            kernel=assets.boot_kernel, initrd=initrd, shares=shares, settings=self.settings,
            host_port=port, serial_log=self.serial_log, qmp_socket=self.dir / "qmp.sock",
            pidfile=self.dir / "qemu.pid",
        )
        (self.dir / "lab.json").write_text(json.dumps({
            "port": port, "memory_mib": self.settings.memory_mib, "cpus": self.settings.cpus,
            "kernel": str(assets.vmlinuz), "argv": argv, "checkout": str(paths.REPO_ROOT),
        }, indent=2))
        try:
            res = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
        except FileNotFoundError as exc:
            raise LabError("qemu-system-x86_64 is not installed", "install qemu-system-x86 (./setup.sh does)") from exc
        if res.returncode != 0:
            raise LabError(f"QEMU did not start: {res.stderr.strip()[-800:]}", "check the QEMU command in " + str(self.dir / "lab.json"))
        self._wait_ready(time.monotonic() + timeout)

    def _wait_ready(self, deadline: float) -> None:
        while True:
            if not self.is_running():
                raise LabError(f"the lab stopped while booting:\n{self._serial_tail()}")
            try:
                self._request({"op": "ping"}, timeout=2.0)
                return
            except (OSError, ConnectionError, LabError):
                pass
            if time.monotonic() > deadline:
                raise LabError(
                    f"the lab did not answer in time:\n{self._serial_tail()}",
                    f"its serial log is {self.serial_log}; `mm lab down` stops a hung lab",
                )
            time.sleep(0.1)

    def _serial_tail(self, lines: int = 25) -> str:
        try:
            return "\n".join(self.serial_log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no serial log)"

    def down(self, timeout: float = 30.0) -> bool:
        """Stop the lab (agent power-off, then QEMU's monitor, then SIGKILL); False if it was not up."""
        with self._locked():
            pid = self._pid()
            if pid is None:
                return False
            try:
                self._request({"op": "poweroff"}, timeout=5.0)
            except (OSError, ConnectionError, LabError):
                qmp_quit(self.dir / "qmp.sock")
            deadline = time.monotonic() + timeout
            while self._pid() is not None:
                if time.monotonic() > deadline:
                    if not qmp_quit(self.dir / "qmp.sock"):
                        os.kill(pid, 9)
                    deadline = time.monotonic() + 5
                time.sleep(0.05)
            return True

    # --- commands
    def _connect(self, timeout: float | None) -> socket.socket:
        info = self._info()
        if not info:
            raise LabError("the lab is not running", "run `mm lab up`")
        sock = socket.create_connection(("127.0.0.1", info["port"]), timeout=timeout)
        return sock

    def _request(self, req: dict, timeout: float | None = None, on_output: Callable[[bytes, bytes], None] | None = None):
        """Send one request; returns (stdout, stderr, result) and streams output to on_output."""
        try:
            return self._request_once(req, timeout, on_output)
        except (ConnectionError, socket.timeout) as exc:
            raise LabError(
                f"lost the connection to the lab: {exc}",
                f"the lab stopped or restarted meanwhile (`mm lab status`; serial log {self.serial_log})",
            ) from exc

    def _request_once(self, req: dict, timeout: float | None, on_output) -> tuple[bytes, bytes, dict]:
        req = dict(req, token=self._token())
        with self._connect(timeout) as sock:
            sock.sendall(json.dumps(req).encode() + b"\n")
            out, err = [], []
            while True:
                kind, payload = wire.read_frame(sock)
                if kind == wire.RESULT:
                    result = json.loads(payload)
                    if "error" in result:
                        raise LabError(f"lab agent: {result['error']}")
                    return b"".join(out), b"".join(err), result
                if on_output is not None:
                    on_output(kind, payload)
                else:
                    (out if kind == wire.STDOUT else err).append(payload)

    def exec_stream(
        self, argv: list[str], stdout: BinaryIO | None = None, stderr: BinaryIO | None = None,
        timeout: float | None = None, env: dict[str, str] | None = None, cwd: str | os.PathLike | None = None,
    ) -> int:
        """Run argv in the lab, writing its output to the given binary streams as it comes."""
        stdout = stdout or sys.stdout.buffer
        stderr = stderr or sys.stderr.buffer

        def on_output(kind: bytes, data: bytes) -> None:
            stream = stdout if kind == wire.STDOUT else stderr
            stream.write(data)
            stream.flush()

        return self._exec(argv, timeout, env, cwd, on_output)[0]

    def exec(
        self, argv: list[str], timeout: float | None = None, env: dict[str, str] | None = None,
        cwd: str | os.PathLike | None = None,
    ) -> tuple[int, str, str]:
        """Run argv in the lab; (exit code, stdout, stderr). LabTimeout when it ran too long."""
        rc, out, err = self._exec(argv, timeout, env, cwd, None)
        return rc, out.decode(errors="replace"), err.decode(errors="replace")

    def _exec(self, argv, timeout, env, cwd, on_output) -> tuple[int, bytes, bytes]:
        if not argv or not all(isinstance(a, str) for a in argv):
            raise LabError(f"bad command {argv!r}", "give a non-empty list of strings")
        if timeout is not None and timeout <= 0:
            raise LabError(f"bad timeout {timeout}", "give a positive number of seconds")
        if not self.is_ready():
            self.ensure_up()
        self._check_checkout()
        req = {"op": "exec", "argv": list(argv), "env": forwarded_env(env), "cwd": str(cwd or "/"), "timeout": timeout,
               "refresh": code_refresh()}
        # The agent enforces the timeout; the socket's own is a safety net if the lab hangs.
        with self.lease():
            out, err, result = self._request(req, timeout=None if timeout is None else timeout + 30, on_output=on_output)
        if result.get("timed_out"):
            exc = LabTimeout(f"`{' '.join(argv)}` ran longer than {timeout:g} s in the lab and was killed")
            exc.stdout, exc.stderr = out, err
            raise exc
        return int(result["rc"]), out, err

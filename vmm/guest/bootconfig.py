"""The per-VM boot configuration mm-init reads: what to mount, run and configure.

Written as `/mm/config` in a small cpio appended to the initrd (see initramfs.py):
`key=value` lines, values percent-encoded (every byte outside `!`..`~`, and `%`,
becomes `%XX`), list keys repeated. The same keys may be given on the kernel command
line as `mm.key=value` (`cmdline()` renders the network ones that way; `dns` is then
comma-separated). The format and every key are documented in guest/PROTOCOL.md.

`from_oci()` applies Docker's rules to an image config plus run-time overrides:
an overridden entrypoint drops the image's Cmd, argv = Entrypoint + Cmd, Env is
merged by key, WorkingDir and User are replaced when given.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from vmm.guest.errors import BootConfigError
from vmm.plain import REQUIRED, Frozen

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~40 ms of `mm run` start-up in the lab (tests/unit/cli/test_run_imports.py)
    from typing import Any

VERSION = 1
_NETWORK_KEYS = ("hostname", "ip", "gw", "ifname", "mtu")


def pct_encode(value: str) -> str:
    data = value.encode()
    if b"\0" in data:
        raise BootConfigError(f"boot config value {value!r} contains a NUL byte")
    return "".join(chr(b) if 0x21 <= b <= 0x7E and b != 0x25 else f"%{b:02X}" for b in data)


def _env_list(env: Mapping[str, str] | Sequence[str] | None) -> list[str]:
    if env is None:
        return []
    items = [f"{k}={v}" for k, v in env.items()] if isinstance(env, Mapping) else list(env)
    for kv in items:
        if "=" not in kv or kv.startswith("="):
            raise BootConfigError(f"environment entry {kv!r} is not KEY=VALUE")
    return items


def merge_env(base: Sequence[str], extra: Sequence[str]) -> list[str]:
    out: dict[str, str] = {}
    for kv in [*base, *extra]:
        key = kv.split("=", 1)[0]
        out.pop(key, None)  # a later value wins and moves to the end, as with docker
        out[key] = kv
    return list(out.values())


# A vmm.plain.Frozen record, not a dataclass: `mm run`'s path imports no dataclasses (and so
# no inspect, ast, dis, tokenize), a second of start-up under the lab's emulation.
class BootConfig(Frozen):
    """What the guest's init is told (rendered into /mm/config), by field name:"""

    FIELDS = {
        "argv": REQUIRED,  # list[str]
        "env": [],  # list[str]
        "workdir": None,  # str | None
        "user": None,  # str | None
        "hostname": "mm",  # str
        "root": "/dev/vda",  # str | None
        "rootfstype": None,  # str | None; None: erofs, then ext4
        "overlay": "/dev/vdb",  # str | None; None: the upper layer lives in tmpfs
        "overlayfstype": "ext4",  # str
        "ip": None,  # str | None; "A.B.C.D/PREFIX"
        "gw": None,  # str | None
        "dns": [],  # list[str]
        "ifname": "eth0",  # str
        "mtu": None,  # int | None
        "ssh": False,  # bool
        "stdio": "console",  # Literal["console", "vsock"]
        "tty": False,  # bool; stdio=vsock: the workload gets a PTY (docker run -t)
        "rows": 24,  # int
        "cols": 80,  # int
        "agent_port": 1024,  # int
        "attach_port": 1025,  # int
        "agent_path": None,  # str | None; Unix socket instead of vsock (host tests)
        "attach_path": None,  # str | None
        "stop_timeout": 10,  # int
        "shutdown": "poweroff",  # Literal["poweroff", "reboot"]
        "debug": False,  # bool
    }

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if not self.argv:
            raise BootConfigError("the workload has no command",
                                  hint="the image has neither Entrypoint nor Cmd: give a command")
        if self.stdio not in ("console", "vsock"):
            raise BootConfigError(f"stdio must be console or vsock, not {self.stdio!r}")
        if not (0 < self.rows < 65536 and 0 < self.cols < 65536):
            raise BootConfigError(f"terminal size {self.rows}x{self.cols} is out of range")
        if self.shutdown not in ("poweroff", "reboot"):
            raise BootConfigError(f"shutdown must be poweroff or reboot, not {self.shutdown!r}")
        self.__dict__["env"] = _env_list(self.env)  # normalized once, as the record is built

    @classmethod
    def from_oci(cls, image_config: Mapping[str, Any] | None, *,
                 command: Sequence[str] | None = None, entrypoint: Sequence[str] | None = None,
                 env: Mapping[str, str] | Sequence[str] | None = None, workdir: str | None = None,
                 user: str | None = None, **machine: Any) -> BootConfig:
        """image_config: the image's config JSON (with or without its "config" wrapper)."""
        conf = dict(image_config or {})
        if isinstance(conf.get("config"), Mapping):
            conf = dict(conf["config"])
        image_ep = list(conf.get("Entrypoint") or [])
        image_cmd = list(conf.get("Cmd") or [])
        if entrypoint is not None:
            ep, cmd = list(entrypoint), list(command) if command is not None else []
        else:
            ep, cmd = image_ep, list(command) if command is not None else image_cmd
        return cls(
            argv=ep + cmd,
            env=merge_env(_env_list(conf.get("Env")), _env_list(env)),
            workdir=workdir if workdir is not None else (conf.get("WorkingDir") or None),
            user=user if user is not None else (conf.get("User") or None),
            **machine,
        )

    def _pairs(self) -> list[tuple[str, str]]:
        pairs: list[tuple[str, str]] = [("version", str(VERSION)), ("hostname", self.hostname)]
        for key in ("root", "rootfstype", "overlay", "workdir", "user", "ip", "gw", "agent_path", "attach_path"):
            value = getattr(self, key)
            if value:
                pairs.append((key, str(value)))
        if self.overlay:
            pairs.append(("overlayfstype", self.overlayfstype))
        pairs += [("arg", a) for a in self.argv]
        pairs += [("env", e) for e in self.env]
        pairs += [("dns", d) for d in self.dns]
        if self.tty:
            pairs += [("tty", "1"), ("rows", str(self.rows)), ("cols", str(self.cols))]
        pairs += [("ifname", self.ifname), ("ssh", "1" if self.ssh else "0"), ("stdio", self.stdio),
                  ("agent_port", str(self.agent_port)), ("attach_port", str(self.attach_port)),
                  ("stop_timeout", str(self.stop_timeout)), ("shutdown", self.shutdown),
                  ("debug", "1" if self.debug else "0")]
        if self.mtu:
            pairs.append(("mtu", str(self.mtu)))
        return pairs

    def render(self) -> bytes:
        """The /mm/config file."""
        return "".join(f"{k}={pct_encode(v)}\n" for k, v in self._pairs()).encode()

    def cmdline(self) -> str:
        """The network/hostname part as kernel command line tokens (mm.key=value)."""
        tokens = []
        for key in _NETWORK_KEYS:
            value = getattr(self, key)
            if value:
                tokens.append(f"mm.{key}={pct_encode(str(value))}")
        if self.dns:
            tokens.append("mm.dns=" + ",".join(pct_encode(d) for d in self.dns))
        return " ".join(tokens)


def parse(text: bytes) -> list[tuple[str, str]]:
    """Decodes a rendered config back to (key, value) pairs (tests, debugging)."""
    out = []
    for line in text.decode().splitlines():
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise BootConfigError(f"config line without '=': {line!r}")
        raw = bytearray()
        i = 0
        while i < len(value):
            if value[i] == "%":
                raw.append(int(value[i + 1:i + 3], 16))
                i += 3
            else:
                raw += value[i].encode()
                i += 1
        out.append((key, raw.decode()))
    return out

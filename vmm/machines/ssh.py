"""`mm ssh`: the OpenSSH client command line for a machine started with `--ssh`.

The machine's directory holds its keys (`ssh/`, made by vmm.guest.ssh.generate when it
was created): the guest's host key, whose public half is pinned in a per-machine
known_hosts next to it, and the user key authorized in the guest. The client runs with
no prompts: batch mode, only that key, StrictHostKeyChecking against only that file.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from vmm.errors import Conflict, HostError, NotFound

SSH_USER = "root"  # dropbear in the guest allows root login by key only (guest/PROTOCOL.md)
CONNECT_TIMEOUT_S = 20


class NoSsh(Conflict):
    """The machine was started without an SSH server."""


def key_dir(control, rec) -> Path:
    return control.paths(rec).root / "ssh"


def ssh_argv(control, ref: str, command: list[str] | None = None, tty: bool | None = None) -> list[str]:
    """The `ssh` argv reaching a running machine; `tty` True/False forces -t/-T."""
    from vmm.guest.ssh import generate
    from vmm.machines.exec import running

    rec = running(control, ref)
    if not rec.config.get("ssh"):
        raise NoSsh(f"machine {rec.name} was started without --ssh, so it runs no SSH server",
                    f"`mm run --ssh ...` starts one; `mm exec -it {rec.name} sh` needs none")
    if not rec.ip:
        raise NoSsh(f"machine {rec.name} has no IP address the host can reach",
                    "it was started without a network (--network none)")
    keys_at = key_dir(control, rec)
    if not (keys_at / "id_ed25519").is_file() or not (keys_at / "host_ed25519.dropbear").is_file():
        raise NotFound(f"the SSH keys of machine {rec.name} are missing from {keys_at}",
                       f"`mm rm -f {rec.name}` and run it again")
    client = shutil.which("ssh")
    if client is None:
        raise HostError("the OpenSSH client `ssh` is not installed", "apt-get install openssh-client")
    keys = generate(keys_at)  # both keys exist: this only reads them
    known_hosts = keys_at / "known_hosts"
    _write_atomic(known_hosts, keys.known_hosts_line(rec.ip))
    argv = [client, "-i", str(keys.user_key), "-l", SSH_USER]
    for option in (
        "IdentitiesOnly=yes", "IdentityAgent=none", "BatchMode=yes", "PasswordAuthentication=no",
        "StrictHostKeyChecking=yes", f"UserKnownHostsFile={known_hosts}", "GlobalKnownHostsFile=/dev/null",
        "HostKeyAlgorithms=ssh-ed25519", "UpdateHostKeys=no", "CheckHostIP=no",
        f"ConnectTimeout={CONNECT_TIMEOUT_S}", "LogLevel=ERROR",
    ):
        argv += ["-o", option]
    if tty is not None:
        argv.append("-t" if tty else "-T")
    argv.append(rec.ip)
    if command:
        argv += ["--", *command]
    return argv


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)

"""Per-VM SSH keys: the guest's ed25519 host key (dropbear's format, made with
`dropbearkey`) and the user key the host logs in with (OpenSSH format, made with
`ssh-keygen`), kept in one directory per VM and reused when already there."""
from __future__ import annotations

from pathlib import Path

from vmm.guest.errors import SshKeyError
from vmm.plain import REQUIRED, Frozen


# A vmm.plain.Frozen record, not a dataclass: `mm run`'s path imports no dataclasses (and so
# no inspect, ast, dis, tokenize), a second of start-up under the lab's emulation.
class SshKeys(Frozen):
    FIELDS = {
        "host_key": REQUIRED,     # Path: dropbear private key, goes into the guest
        "host_public": REQUIRED,  # "ssh-ed25519 AAAA..." for known_hosts
        "user_key": REQUIRED,     # Path: OpenSSH private key for `ssh -i`
        "user_public": REQUIRED,  # the authorized_keys line
    }

    def known_hosts_line(self, host: str) -> str:
        return f"{host} {self.host_public}\n"


def _run(argv: list[str]) -> str:
    import shutil
    import subprocess

    if not shutil.which(argv[0]):
        raise SshKeyError(f"{argv[0]} is not installed")
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SshKeyError(f"{' '.join(argv)} failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout


def generate(directory: Path) -> SshKeys:
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    host_key = directory / "host_ed25519.dropbear"
    user_key = directory / "id_ed25519"
    if not host_key.exists():
        _run(["dropbearkey", "-t", "ed25519", "-f", str(host_key)])
    host_public = next((ln for ln in _run(["dropbearkey", "-y", "-f", str(host_key)]).splitlines()
                        if ln.startswith("ssh-ed25519 ")), None)
    if host_public is None:
        raise SshKeyError(f"dropbearkey printed no public key for {host_key}")
    if not user_key.exists():
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "mm", "-f", str(user_key)])
    user_public = user_key.with_suffix(".pub").read_text().strip()
    return SshKeys(host_key, " ".join(host_public.split()[:2]), user_key, user_public)

"""mm-init as PID 1 on this host: a mount+pid+net+uts namespace stands in for the VM.

The test builds an initramfs directory (mm-init as /init, /mm/config), a tiny image
(busybox-static, a fake /etc/passwd and /etc/group) bind-mounted where the config's
root points, and runs `chroot IR /init` as PID 1 of the new namespaces. Everything
init does in a guest happens for real: kernel filesystems, overlay root, switch
root, hostname, /etc files, network ioctls on a veth called eth0, user/env/workdir
resolution, exit code report, kill-all, unmount and reboot() (which, in a pid
namespace, ends the namespace instead of the machine).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from vmm.guest.bootconfig import BootConfig

BUSYBOX = shutil.which("busybox")
pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="namespaces, mounts and chroot need root"),
    pytest.mark.skipif(not shutil.which("unshare"), reason="util-linux unshare is missing"),
    pytest.mark.skipif(not BUSYBOX, reason="busybox-static is needed for the test image"),
]

PASSWD = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n"
GROUP = "root:x:0:\napp:x:1000:\nextra:x:2000:app\nother:x:3000:\n"


@pytest.fixture
def vm(mm_init, tmp_path):
    ir, img = tmp_path / "ir", tmp_path / "img"
    for d in ("dev", "proc", "sys", "mm/root", "hostimg", "hostrw"):
        (ir / d).mkdir(parents=True)
    shutil.copy(mm_init, ir / "init")
    (img / "bin").mkdir(parents=True)
    shutil.copy(BUSYBOX, img / "bin" / "busybox")
    for applet in ("sh", "id", "env", "pwd", "cat", "hostname", "ip", "ls", "sleep", "touch", "kill", "mount", "true", "echo", "stty"):
        (img / "bin" / applet).symlink_to("busybox")
    (img / "etc").mkdir()
    (img / "etc" / "passwd").write_text(PASSWD)
    (img / "etc" / "group").write_text(GROUP)
    (img / "home" / "app").mkdir(parents=True)
    rw = tmp_path / "rw"
    rw.mkdir()

    class VM:
        root = img
        upper = rw / "upper"

        @staticmethod
        def run(config: BootConfig, timeout: float = 30) -> tuple[int, int, str]:
            (ir / "mm" / "config").write_bytes(config.render())
            script = (f"ip link add eth0 type veth peer name eth1 || exit 99\n"
                      f"mount --bind {img} {ir}/hostimg && mount --bind {rw} {ir}/hostrw || exit 98\n"
                      f"exec chroot {ir} /init\n")
            proc = subprocess.run(
                ["unshare", "--mount", "--pid", "--net", "--uts", "--ipc", "--fork",
                 "--propagation", "private", "sh", "-c", script],
                capture_output=True, text=True, timeout=timeout)
            m = re.search(r"^MM-EXIT code=(\d+) signal=(\d+)$", proc.stdout, re.M)
            assert m, f"no MM-EXIT line; stdout={proc.stdout!r} stderr={proc.stderr!r}"
            return int(m.group(1)), int(m.group(2)), proc.stdout + proc.stderr

    return VM


def boot(argv, **kw) -> BootConfig:
    kw.setdefault("root", "/hostimg")
    kw.setdefault("overlay", None)
    return BootConfig(argv=argv, **kw)


def test_exit_code_propagates(vm):
    assert vm.run(boot(["sh", "-c", "exit 7"]))[:2] == (7, 0)
    assert vm.run(boot(["true"]))[:2] == (0, 0)


def test_signal_death_is_128_plus_n(vm):
    assert vm.run(boot(["sh", "-c", "kill -KILL $$"]))[:2] == (137, 9)


def test_oci_user_env_workdir(vm):
    cfg = BootConfig.from_oci(
        {"Entrypoint": ["/bin/sh", "-c"], "Cmd": ['id; pwd; echo "F=$FOO H=$HOME N=$HOSTNAME P=$PATH"'],
         "Env": ["FOO=image"], "WorkingDir": "/home/app/work", "User": "app"},
        env={"FOO": "override"}, root="/hostimg", overlay=None, hostname="vm1")
    code, _, out = vm.run(cfg)
    assert code == 0
    assert "uid=1000(app) gid=1000(app) groups=1000(app),2000(extra)" in out
    assert "/home/app/work\n" in out
    assert "F=override H=/home/app N=vm1 P=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" in out
    assert not (vm.root / "home" / "app" / "work").exists()  # created in the overlay only


def test_numeric_user_and_group(vm):
    code, _, out = vm.run(boot(["id"], user="4000:other"))
    assert code == 0 and "uid=4000 gid=3000(other)" in out


def test_unknown_user_fails_before_the_workload(vm):
    code, _, out = vm.run(boot(["true"], user="nobody-here"))
    assert code == 125 and "unable to find user nobody-here" in out


def test_missing_command_is_127(vm):
    assert vm.run(boot(["/bin/no-such"]))[0] == 127


def test_hostname_hosts_resolv_and_network(vm):
    code, _, out = vm.run(boot(
        ["sh", "-c", "hostname; cat /etc/hosts /etc/resolv.conf; ip -4 addr show eth0; ip route; ip link show lo"],
        hostname="box", ip="10.9.0.2/24", gw="10.9.0.1", dns=["9.9.9.9", "1.1.1.1"], mtu=1400))
    assert code == 0
    assert "box\n" in out and "10.9.0.2\tbox" in out
    assert "nameserver 9.9.9.9\nnameserver 1.1.1.1" in out
    assert "inet 10.9.0.2/24" in out and "mtu 1400" in out
    assert "default via 10.9.0.1 dev eth0" in out
    assert re.search(r"lo: <LOOPBACK,UP", out)


def test_mounts_and_readonly_image_under_overlay(vm):
    code, _, out = vm.run(boot(["sh", "-c", "touch /new-file && mount"]))
    assert code == 0
    for what in ("overlay on / type overlay", "proc on /proc", "devpts on /dev/pts", "on /dev/shm type tmpfs",
                 "on /tmp type tmpfs", "cgroup2 on /sys/fs/cgroup", "on /run type tmpfs"):
        assert what in out
    assert not (vm.root / "new-file").exists()


def test_overlay_disk_keeps_the_writes(vm):
    code, _, _ = vm.run(boot(["sh", "-c", "echo kept > /state"], overlay="/hostrw"))
    assert code == 0
    assert (vm.upper / "state").read_text() == "kept\n"
    assert not (vm.root / "state").exists()


def test_zombies_are_reaped_and_everything_is_killed(vm):
    # The workload leaves an orphan behind; init must still finish promptly.
    start = time.monotonic()
    code, _, _ = vm.run(boot(["sh", "-c", "sleep 300 & exit 3"]))
    assert code == 3 and time.monotonic() - start < 15


def _ns_init_pid(unshare_pid: int, timeout: float = 5) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            children = Path(f"/proc/{unshare_pid}/task/{unshare_pid}/children").read_text().split()
        except FileNotFoundError:
            children = []
        if children:
            return int(children[0])
        time.sleep(0.02)
    raise AssertionError("the namespace's init did not start")


@pytest.mark.skipif(not shutil.which("ssh") or not shutil.which("nsenter"), reason="openssh-client and nsenter needed")
@pytest.mark.skipif(not os.path.exists("/usr/sbin/dropbear"), reason="dropbear-bin is not installed")
def test_ssh_with_per_vm_keys_and_signal_forwarding(vm, tmp_path):
    from vmm.guest import initramfs, ssh
    from vmm.guest.cpio import read_names

    keys = ssh.generate(tmp_path / "keys")
    cfg = boot(["sleep", "60"], ssh=True, ip="10.9.0.2/24")
    # Unpack what the real initrd carries for SSH into the test's initramfs dir.
    ir = tmp_path / "ir"
    archive = initramfs.base_initramfs(ssh=True).read_bytes() + initramfs.config_archive(cfg, keys)
    for name, (mode, data) in read_names(archive).items():
        if name.startswith("mm/ssh/"):
            (ir / "mm" / "ssh").mkdir(exist_ok=True)
            (ir / name).write_bytes(data)
            (ir / name).chmod(mode & 0o777)
    (ir / "mm" / "config").write_bytes(cfg.render())
    known = tmp_path / "known_hosts"
    known.write_text(keys.known_hosts_line("10.9.0.2"))
    script = (f"ip link add eth0 type veth peer name eth1 || exit 99\n"
              f"mount --bind {vm.root} {ir}/hostimg || exit 98\n"
              f"exec chroot {ir} /init\n")
    proc = subprocess.Popen(["unshare", "--mount", "--pid", "--net", "--uts", "--ipc", "--fork",
                             "--propagation", "private", "sh", "-c", script],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        init = _ns_init_pid(proc.pid)
        ssh_cmd = ["nsenter", "-t", str(init), "-n", "ssh", "-i", str(keys.user_key),
                   "-o", f"UserKnownHostsFile={known}", "-o", "StrictHostKeyChecking=yes",
                   "-o", "BatchMode=yes", "-o", "ConnectTimeout=5", "root@10.9.0.2"]
        deadline = time.monotonic() + 15
        while True:
            r = subprocess.run([*ssh_cmd, "echo hello from $(hostname); id -u"], capture_output=True, text=True)
            if r.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert r.returncode == 0, r.stderr
        assert r.stdout.split() == ["hello", "from", "mm", "0"]
        # SIGTERM to PID 1 is forwarded to the workload, whose death ends the VM.
        subprocess.run([*ssh_cmd, "kill -TERM 1"], capture_output=True, timeout=15)
        out, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "MM-EXIT code=143 signal=15" in out


class Running:
    """An init running in the background; sockets reached through /proc/PID/root."""

    def __init__(self, vm, cfg: BootConfig, ir: Path) -> None:
        (ir / "mm" / "config").write_bytes(cfg.render())
        script = (f"ip link add eth0 type veth peer name eth1 || exit 99\n"
                  f"mount --bind {vm.root} {ir}/hostimg || exit 98\n"
                  f"exec chroot {ir} /init\n")
        self.proc = subprocess.Popen(["unshare", "--mount", "--pid", "--net", "--uts", "--ipc", "--fork",
                                      "--propagation", "private", "sh", "-c", script],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.init = _ns_init_pid(self.proc.pid)

    def socket(self, path: str, timeout: float = 10) -> Path:
        p = Path(f"/proc/{self.init}/root{path}")
        deadline = time.monotonic() + timeout
        from tests.guest.conftest import listening

        while not listening(p):
            assert time.monotonic() < deadline, f"{path} did not start listening"
            time.sleep(0.02)
        return p

    def finish(self, timeout: float = 30) -> str:
        try:
            return self.proc.communicate(timeout=timeout)[0]
        finally:
            if self.proc.poll() is None:
                self.proc.kill()


def test_attached_stdio_and_exit_status(vm, tmp_path):
    from vmm.guest.agent_client import AgentClient

    cfg = boot(["sh", "-c", "read x; echo got $x; echo oops >&2; exit 5"], stdio="vsock",
               attach_path="/run/attach.sock")
    run = Running(vm, cfg, tmp_path / "ir")
    try:
        ex = AgentClient(run.socket("/run/attach.sock")).attach()
        ex.write(b"hello\n")
        ex.close_stdin()
        out = list(ex.output())
    finally:
        log = run.finish()
    assert ("stdout", b"got hello\n") in out and ("stderr", b"oops\n") in out
    assert (ex.exit_code, ex.signal) == (5, 0)
    assert "MM-EXIT code=5 signal=0" in log


def test_agent_in_the_guest_uses_config_env_and_shutdown_stops_the_workload(vm, tmp_path):
    from vmm.guest.agent_client import AgentClient

    cfg = boot(["sleep", "60"], env=["FROM_IMAGE=yes"], agent_path="/run/agent.sock", stop_timeout=5)
    run = Running(vm, cfg, tmp_path / "ir")
    try:
        agent = AgentClient(run.socket("/run/agent.sock"))
        r = agent.exec(["sh", "-c", "echo $FROM_IMAGE $HOSTNAME; id -un"], user="app")
        assert r.stdout == b"yes mm\napp\n"
        agent.shutdown()
    finally:
        log = run.finish()
    assert "MM-EXIT code=143 signal=15" in log


def test_killed_agent_is_restarted_by_init(vm, tmp_path):
    from vmm.guest.agent_client import AgentClient

    cfg = boot(["sleep", "60"], agent_path="/run/agent.sock", stop_timeout=2)
    run = Running(vm, cfg, tmp_path / "ir")
    try:
        agent = AgentClient(run.socket("/run/agent.sock"))
        workload_and_agent = Path(f"/proc/{run.init}/task/{run.init}/children").read_text().split()
        listener = next(int(p) for p in workload_and_agent
                        if Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")[0] != b"sleep")
        time.sleep(1.1)  # init restarts an agent that had been up for more than a second
        os.kill(listener, 9)
        deadline = time.monotonic() + 10
        while True:
            try:
                r = agent.exec(["echo", "back"])
                break
            except Exception:
                assert time.monotonic() < deadline, "the agent did not come back"
                time.sleep(0.05)
        assert r.stdout == b"back\n"
        agent.shutdown()
    finally:
        log = run.finish()
    assert "agent exited (signal 9)" in log and "restarting it" in log

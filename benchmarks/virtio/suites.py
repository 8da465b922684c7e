"""virtio device benchmarks side by side: our VMM (`mm boot`) vs QEMU microvm's
virtio-mmio devices, same kernel, same initramfs, same files, alternating, N rounds.

    mm lab exec -- .venv/bin/python benchmarks/sidebyside.py virtio-blk --rounds 3
    (virtio-net, virtio-vsock likewise; benchmarks/sidebyside.py lists them)

* virtio-blk: fio in the guest on /dev/vda (a raw file in the guest host's /tmp):
  4 KiB random read (libaio, O_DIRECT, iodepth 16) and 1 MiB sequential write (iodepth 4).
* virtio-net: iperf3 server in the guest, the client on the host end of the TAP in a
  network namespace: TCP host→guest and guest→host. QEMU: `-netdev tap,vhost=off`.
* virtio-vsock: mmsock's bench server in the guest; host→guest and guest→host stream
  throughput (64 MiB) and connect latency (host connects, stream established). Ours
  through the device's Unix socket (`CONNECT`); QEMU has no vsock device outside the
  kernel, so its peer is vhost-vsock (AF_VSOCK on the host) and the comparison says so.

fio and iperf3 are the host's binaries carried into a busybox initramfs with their
libraries (tests/e2e/virtio_guest.initramfs). Results go to benchmarks/results/
<suite>-<UTC time>.json and .md; every ratio is oriented so that > 1 favours us.
"""
from __future__ import annotations

import os
import platform
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.iperf import tcp_mbps
from benchmarks.virtio.guestvm import BenchError, GuestProcess

OURS, PEER = "mm", "qemu-microvm"
WORK = Path("/tmp/mm-bench-virtio")  # the guest host's local /tmp: a socket and a disk that are not on 9p
READY = "MM-BENCH-READY"
END = "MM-BENCH-END"
# Markers also go through the kernel log (level 2: shown under `quiet`): under QEMU microvm
# our kernel's ttyS0 loses user-space output (printk's console path is polled), and the
# guests never wait for console input, so both VMMs are driven the same way.
SAY = 'say() { echo "$*"; echo "<2>$*" > /dev/kmsg; }\n'
NETNS, TAP, HOST_IP, GUEST_IP = "mm-bench-net", "mmbtap0", "10.0.9.1", "10.0.9.2"
VSOCK_PORT = 5000


# -- the two VMMs --------------------------------------------------------------------------
def ours_argv(args, initrd: Path, devices: list[str]) -> list[str]:
    return [sys.executable, "-m", "vmm", "boot", "--kernel", args.kernel, "--initrd", str(initrd),
            "--cpus", str(args.cpus), "--memory", f"{args.mem_mib}m", "--append", args.guest_append, *devices]


def qemu_argv(args, initrd: Path, devices: list[str]) -> list[str]:
    return [args.qemu, "-M", "microvm", "-accel", "kvm", "-cpu", "host", "-smp", str(args.cpus),
            "-m", f"{args.mem_mib}M", "-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio",
            "-no-reboot", "-kernel", args.kernel, "-initrd", str(initrd),
            "-append", f"console=ttyS0 reboot=k panic=-1 {args.guest_append}", *devices]


def build_initrd(script: str, host_binaries: list[str] = (), mmsock: bool = False) -> Path:
    from tests.e2e.virtio_guest import initramfs, mmsock_binary

    tools = {"mmsock": mmsock_binary()} if mmsock else {}
    return initramfs(WORK, script, tools=tools, host_binaries=list(host_binaries))


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise BenchError(f"{tool} is missing: apt-get install {tool} (setup.sh lists it)")
    return path


# -- virtio-blk ----------------------------------------------------------------------------
class BlockSuite:
    name = "virtio-blk"
    metrics = {"randread_4k_iops": ("IOPS", "higher"), "randread_4k_MBps": ("MB/s", "higher"),
               "seqwrite_1m_MBps": ("MB/s", "higher")}
    DISK_MIB = 512

    def __init__(self, args) -> None:
        self.args = args
        t = args.seconds
        fio = f"fio --filename=/dev/vda --direct=1 --ioengine=libaio --runtime={t} --time_based " \
              "--output-format=terse --terse-version=3 --group_reporting"
        pick = "cut -d';' -f3,5,7,8,48,49"  # jobname, error, read KiB/s, read IOPS, write KiB/s, write IOPS
        self.script = SAY + f"""say {READY}
say "MM-FIO-RANDREAD $({fio} --name=randread --rw=randread --bs=4k --iodepth=16 | {pick})"
say "MM-FIO-SEQWRITE $({fio} --name=seqwrite --rw=write --bs=1M --iodepth=4 | {pick})"
say {END}
"""
        self.disk = WORK / "disk.img"

    def setup(self) -> str:
        if not self.disk.exists() or self.disk.stat().st_size != self.DISK_MIB << 20:
            with open(self.disk, "wb") as f:  # real data: a sparse file would read back holes
                for _ in range(self.DISK_MIB):
                    f.write(os.urandom(1 << 20))
        self.initrd = build_initrd(self.script, [_need("fio")])
        return (f"fio {self.args.seconds} s per job on a {self.DISK_MIB} MiB raw file in tmpfs "
                f"({self.disk}); randread 4k iodepth 16, write 1M iodepth 4, libaio, O_DIRECT")

    def contenders(self) -> list[tuple[str, list[str], tuple]]:
        qemu_disk = ["-drive", f"id=d0,file={self.disk},format=raw,if=none,cache=writeback,aio=threads",
                     "-device", "virtio-blk-device,drive=d0"]
        return [(OURS, ours_argv(self.args, self.initrd, ["--disk", str(self.disk)]), ()),
                (PEER, qemu_argv(self.args, self.initrd, qemu_disk), ())]

    def workload(self, vm: GuestProcess) -> dict:
        vm.wait_for(READY, self.args.timeout)
        vm.wait_for(END, 4 * self.args.seconds + 120)
        rr = _terse(vm, "MM-FIO-RANDREAD ")
        sw = _terse(vm, "MM-FIO-SEQWRITE ")
        return {"randread_4k_iops": float(rr[3]), "randread_4k_MBps": float(rr[2]) * 1024 / 1e6,
                "seqwrite_1m_MBps": float(sw[4]) * 1024 / 1e6}

    def teardown(self) -> None:
        pass


def _terse(vm: GuestProcess, tag: str) -> list[str]:
    found = vm.lines(tag)
    if not found:
        raise BenchError(f"{vm.name}: fio printed no {tag.strip()} line:\n{vm.text()[-3000:]}")
    fields = found[0][len(tag):].split(";")
    if len(fields) != 6 or fields[1] != "0":
        raise BenchError(f"{vm.name}: fio failed: {found[0][:300]}")
    return fields


# -- virtio-net ----------------------------------------------------------------------------
class NetSuite:
    name = "virtio-net"
    metrics = {"tcp_host_to_guest_Mbps": ("Mbit/s", "higher"), "tcp_guest_to_host_Mbps": ("Mbit/s", "higher")}

    def __init__(self, args) -> None:
        self.args = args
        self.script = SAY + f"""ip link set lo up
ip addr add {GUEST_IP}/24 dev eth0 && ip link set eth0 up
(sleep 1; say {READY}) &
iperf3 -s -1 > /dev/null 2>&1
iperf3 -s -1 > /dev/null 2>&1
"""

    def setup(self) -> str:
        self.iperf3 = _need("iperf3")
        subprocess.run(["ip", "netns", "del", NETNS], capture_output=True)
        for cmd in (["ip", "netns", "add", NETNS], ["ip", "-n", NETNS, "link", "set", "lo", "up"],
                    ["ip", "-n", NETNS, "tuntap", "add", "dev", TAP, "mode", "tap", "vnet_hdr"],
                    ["ip", "-n", NETNS, "addr", "add", f"{HOST_IP}/24", "dev", TAP],
                    ["ip", "-n", NETNS, "link", "set", TAP, "up"]):
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode != 0:
                raise BenchError(f"{' '.join(cmd)}: {res.stderr.strip()}")
        self.initrd = build_initrd(self.script, [self.iperf3])
        return (f"iperf3 TCP {self.args.seconds} s each way; guest {GUEST_IP} on a TAP (vnet header) whose host end "
                f"{HOST_IP} is in netns {NETNS}; QEMU with vhost=off")

    def contenders(self):
        ns = ("ip", "netns", "exec", NETNS)
        qemu_net = ["-netdev", f"tap,id=n0,ifname={TAP},script=no,downscript=no,vhost=off",
                    "-device", "virtio-net-device,netdev=n0,mac=52:54:00:00:09:02"]
        return [(OURS, ours_argv(self.args, self.initrd, ["--tap", f"{TAP}:52:54:00:00:09:02"]), ns),
                (PEER, qemu_argv(self.args, self.initrd, qemu_net), ns)]

    def workload(self, vm: GuestProcess) -> dict:
        vm.wait_for(READY, self.args.timeout)
        return {"tcp_host_to_guest_Mbps": self._iperf(vm, False), "tcp_guest_to_host_Mbps": self._iperf(vm, True)}

    def _iperf(self, vm: GuestProcess, reverse: bool) -> float:
        return tcp_mbps(GUEST_IP, self.args.seconds, reverse, iperf3=self.iperf3, prefix=("ip", "netns", "exec", NETNS),
                        error=BenchError, what=vm.name)

    def teardown(self) -> None:
        subprocess.run(["ip", "netns", "del", NETNS], capture_output=True)


# -- virtio-vsock --------------------------------------------------------------------------
class VsockSuite:
    name = "virtio-vsock"
    metrics = {"stream_host_to_guest_MBps": ("MB/s", "higher"), "stream_guest_to_host_MBps": ("MB/s", "higher"),
               "connect_latency_ms": ("ms", "lower")}
    STREAM_BYTES = 64 << 20
    CONNECTS = 100

    def __init__(self, args) -> None:
        self.args = args
        self.cid = 3000 + os.getpid() % 10000  # vhost-vsock CIDs are global in the guest host's kernel
        self.uds = WORK / f"vsock-{os.getpid()}.sock"
        self.script = SAY + f"""(sleep 1; say {READY}) &
mmsock bench vsock {VSOCK_PORT} {2 + self.CONNECTS} > /dev/null
"""

    def setup(self) -> str:
        subprocess.run(["modprobe", "vhost_vsock"], capture_output=True)
        if not os.path.exists("/dev/vhost-vsock"):
            raise BenchError("/dev/vhost-vsock is missing (modprobe vhost_vsock): QEMU's only vsock device needs it")
        self.initrd = build_initrd(self.script, mmsock=True)
        return (f"{self.STREAM_BYTES >> 20} MiB per stream each way, {self.CONNECTS} sequential connects; ours via "
                f"the device's Unix socket (CONNECT), QEMU's peer is vhost-vsock (in-kernel, AF_VSOCK; QEMU has no "
                f"user-space vsock), guest CID {self.cid}")

    def contenders(self):
        return [(OURS, ours_argv(self.args, self.initrd, ["--vsock", f"{self.cid}:{self.uds}"]), ()),
                (PEER, qemu_argv(self.args, self.initrd, ["-device", f"vhost-vsock-device,guest-cid={self.cid}"]), ())]

    def _connect(self, name: str, timed: bool = True) -> socket.socket:
        """A stream to the guest's bench server. Both clients are blocking sockets, for
        streams with kernel timeouts (SO_RCVTIMEO/SO_SNDTIMEO) rather than Python's
        settimeout(), which polls before every call; the latency loop sets none (`timed`
        False: a connect is bounded by AF_VSOCK's own 2 s, ours by the device's 10 s), so
        its figure is the VMM's, not the client's. Ours pays the CONNECT/OK line on top
        of the connect (the device's protocol)."""
        wrap = _timed if timed else (lambda s: s)
        if name == OURS:
            s = wrap(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
            s.connect(str(self.uds))
            s.sendall(b"CONNECT %d\n" % VSOCK_PORT)
            _read_ok_line(s)
            return s
        s = wrap(socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM))
        s.connect((self.cid, VSOCK_PORT))  # AF_VSOCK's own connect timeout applies (2 s)
        return s

    def _first_connect(self, name: str, seconds: float = 20.0) -> socket.socket:
        """The first stream of a run, retried while the guest's server is not listening
        yet (READY is said a second after it starts; a loaded lab can take longer): a
        refused stream is a reset for vhost-vsock and a closed CONNECT for ours."""
        deadline = time.monotonic() + seconds
        while True:
            try:
                return self._connect(name)
            except (ConnectionError, BenchError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def workload(self, vm: GuestProcess) -> dict:
        vm.wait_for(READY, self.args.timeout)
        out = {"stream_host_to_guest_MBps": self._send(vm.name), "stream_guest_to_host_MBps": self._receive(vm.name)}
        lat = []
        for _ in range(self.CONNECTS):
            t0 = time.perf_counter()
            s = self._connect(vm.name, timed=False)
            lat.append(time.perf_counter() - t0)
            s.close()
        out["connect_latency_ms"] = statistics.median(lat) * 1e3
        return out

    def _send(self, name: str) -> float:
        chunk = os.urandom(1 << 18)
        s = self._first_connect(name)
        t0 = time.perf_counter()
        s.sendall(b"R" + struct.pack("<Q", 0))
        for _ in range(self.STREAM_BYTES // len(chunk)):
            s.sendall(chunk)
        s.shutdown(socket.SHUT_WR)
        got = struct.unpack("<Q", _recv_exact(s, 8))[0]
        dt = time.perf_counter() - t0
        s.close()
        if got != self.STREAM_BYTES:
            raise BenchError(f"{name}: the guest counted {got} of {self.STREAM_BYTES} bytes")
        return got / dt / 1e6

    def _receive(self, name: str) -> float:
        s = self._connect(name)
        buf = bytearray(1 << 18)
        t0 = time.perf_counter()
        s.sendall(b"W" + struct.pack("<Q", self.STREAM_BYTES))
        got = 0
        while (n := s.recv_into(buf)) > 0:
            got += n
        dt = time.perf_counter() - t0
        s.close()
        if got != self.STREAM_BYTES:
            raise BenchError(f"{name}: received {got} of {self.STREAM_BYTES} bytes")
        return got / dt / 1e6

    def teardown(self) -> None:
        for p in (self.uds, Path(f"{self.uds}_{VSOCK_PORT}")):
            try:
                p.unlink()
            except FileNotFoundError:
                pass


def _timed(s: socket.socket, seconds: int = 60) -> socket.socket:
    # Through libc: Python's setsockopt() takes only integers on AF_VSOCK sockets.
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    tv = ctypes.create_string_buffer(struct.pack("@ll", seconds, 0), 16)
    for opt in (socket.SO_RCVTIMEO, socket.SO_SNDTIMEO):
        if libc.setsockopt(s.fileno(), socket.SOL_SOCKET, opt, tv, len(tv.raw)) != 0:
            s.close()
            raise OSError(ctypes.get_errno(), f"setsockopt({opt}) on the benchmark's socket failed")
    return s


def _read_ok_line(s: socket.socket) -> None:
    """The device's `OK <port>\n`, read as a client of this server would: the bench
    server never speaks first, so nothing can follow the line and it is taken whole
    (one recv() as a rule, no peek), and anything after it is a protocol error."""
    line = b""
    while not line.endswith(b"\n"):
        chunk = s.recv(64)
        if not chunk or len(line) > 64:
            s.close()
            raise BenchError(f"vsock CONNECT {VSOCK_PORT}: closed after {line!r}")
        line += chunk
    if not line.startswith(b"OK ") or line.index(b"\n") != len(line) - 1:
        s.close()
        raise BenchError(f"vsock CONNECT {VSOCK_PORT}: answered {line!r}")


def _recv_exact(s: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            raise BenchError(f"stream closed after {len(data)} of {n} bytes")
        data += chunk
    return data


SUITES = {s.name: s for s in (BlockSuite, NetSuite, VsockSuite)}

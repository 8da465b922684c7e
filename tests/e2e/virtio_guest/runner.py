"""Boot one virtio test guest with our VMM and act as its host peer; run where real guests
run (the lab on a PVM host):

    python -m tests.e2e.virtio_guest.runner --kernel K --initrd I [--disk P] [--tap NAME]
        [--vsock CID:UDS] [--vsock-echo PORT] [--vsock-client PORT:N:SIZE]
        [--tcp-echo ADDR:PORT] [--tcp-client ADDR:PORT:N:SIZE] [--ping ADDR] [--balloon MIB]
        [--balloon-spec SPEC] [--balloon-watch] ...

It builds a `vmm.machine.Machine` (virtio transports on the MMIO bus, queue eventfds as
KVM ioeventfds, interrupts as irqfds), prints the guest console, and runs the host side
of each check when the guest's console says it is ready (the `MM-…` lines of
tests/e2e/virtio_guest and mmsock). Its findings are printed after the console as
`MM-HOST-…` lines; the pytest side asserts on them. Exit status 0 when the guest powered off.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time

RUN_TIMEOUT = 570.0
REPORTED_ENOUGH = 64 << 20  # what watch_reporting waits to see returned


class HostHooks(threading.Thread):
    """Host-side actions timed by the guest's console lines (balloon, vsock, TCP, ping)."""

    def __init__(self, machine, console: bytearray, args) -> None:
        super().__init__(daemon=True)
        self.m, self.console, self.args = machine, console, args
        self.report: list[str] = []
        self.servers: list[tuple[str, object]] = []
        self.paths: list[str] = []  # socket files to remove at the end

    def wait_for(self, marker: bytes, timeout: float = 300) -> bool:
        deadline = time.monotonic() + timeout
        while marker not in self.console:
            if time.monotonic() > deadline:
                self.report.append(f"MM-HOST-TIMEOUT waiting for {marker.decode()}")
                return False
            time.sleep(0.05)
        return True

    def start_servers(self) -> None:
        """Listeners the guest connects to: up before the guest boots."""
        from tests.e2e.virtio_guest.hostside import EchoServer

        a = self.args
        if a.tcp_echo:
            addr, port = a.tcp_echo.rsplit(":", 1)
            ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            ls.bind((addr, int(port)))
            ls.listen(512)
            self.servers.append(("TCP", EchoServer(ls)))
        if a.vsock_echo:
            path = f"{vsock_uds(a)}_{a.vsock_echo}"
            self.paths.append(path)
            ls = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            ls.bind(path)
            ls.listen(512)
            self.servers.append(("VSOCK", EchoServer(ls)))
        for _, srv in self.servers:
            srv.start()

    def stop_servers(self) -> None:
        for kind, srv in self.servers:
            srv.stop()
            self.report.append(f"MM-HOST-{kind}-ECHO-SERVER done={srv.done} bytes={srv.bytes} errors={srv.errors}")
        for path in self.paths:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    def run(self) -> None:
        a = self.args
        threads = []
        if a.balloon:
            threads.append(threading.Thread(target=self.balloon))
        if a.balloon_watch:
            threads.append(threading.Thread(target=self.watch_reporting))
        if a.ping:
            threads.append(threading.Thread(target=self.ping))
        if a.tcp_client:
            threads.append(threading.Thread(target=self.tcp_client))
        if a.vsock_client:
            threads.append(threading.Thread(target=self.vsock_client))
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.m.write_console(b"host-done\n")  # the guest may wait for this line

    def balloon(self) -> None:
        from devices.virtio.balloon.device import BalloonDevice

        dev = self.m.device(BalloonDevice)
        if not self.wait_for(b"MM-BALLOON-READY"):
            return
        before = self.memfd_bytes()
        dev.set_target(self.args.balloon)
        deadline = time.monotonic() + 120
        while dev.actual_pages < dev.num_pages and time.monotonic() < deadline:
            time.sleep(0.1)
        after = self.memfd_bytes()
        self.report.append(f"MM-BALLOON before={before} after={after} actual={dev.actual_pages} "
                           f"inflated={dev.metrics.inflated_pages}")

    def watch_reporting(self) -> None:
        """Free page reporting, with nothing inflated: the memfd's allocation at the guest's
        MM-BALLOON-FILLED (its tmpfs file still there), then, once it says MM-BALLOON-FREED,
        how far the allocation falls within 60 s as the guest reports its free pages."""
        from devices.virtio.balloon.device import BalloonDevice

        dev = self.m.device(BalloonDevice)
        if not self.wait_for(b"MM-BALLOON-FILLED"):
            return
        peak = self.memfd_bytes()
        self.m.write_console(b"measured\n")
        if not self.wait_for(b"MM-BALLOON-FREED"):
            return
        deadline, after = time.monotonic() + 60, peak
        while peak - after < REPORTED_ENOUGH and time.monotonic() < deadline:
            time.sleep(0.2)
            after = self.memfd_bytes()
        self.report.append(f"MM-BALLOON-REPORTING peak={peak} after={after} "
                           f"reported={dev.metrics.reported_bytes} actual={dev.actual_pages}")

    def memfd_bytes(self) -> int:
        """Host memory the guest's RAM holds now (the memfd's allocated blocks)."""
        return os.fstat(self.m.mem.memfd).st_blocks * 512

    def ping(self) -> None:
        if not self.wait_for(b"MM-NET-UP"):
            return
        res = subprocess.run(["/bin/busybox", "ping", "-c", "3", "-W", "5", self.args.ping], capture_output=True, text=True)
        summary = [ln for ln in res.stdout.splitlines() if "packets transmitted" in ln]
        self.report.append(f"MM-HOST-PING rc={res.returncode} {summary[0] if summary else res.stderr.strip()}")

    def tcp_client(self) -> None:
        from tests.e2e.virtio_guest.hostside import echo_clients

        addr, port, n, size = self.args.tcp_client.rsplit(":", 3)
        if not self.wait_for(f"MM-SOCK-LISTENING tcp {port}".encode()):
            return
        res = echo_clients(lambda: socket.create_connection((addr, int(port)), timeout=60), int(n), int(size))
        self.report.append(f"MM-HOST-TCP-CLIENT {json.dumps(res)}")

    def vsock_client(self) -> None:
        from tests.e2e.virtio_guest.hostside import echo_clients, vsock_connect

        port, n, size = self.args.vsock_client.split(":")
        if not self.wait_for(f"MM-SOCK-LISTENING vsock {port}".encode()):
            return
        uds = vsock_uds(self.args)
        res = echo_clients(lambda: vsock_connect(uds, int(port)), int(n), int(size))
        self.report.append(f"MM-HOST-VSOCK-CLIENT {json.dumps(res)}")


def vsock_uds(args) -> str:
    return args.vsock.partition(":")[2]


def device_metrics(machine) -> dict:
    out = {}
    for t in machine.transports:
        metrics = getattr(t.device, "metrics", None)
        if metrics is not None and hasattr(metrics, "snapshot"):
            out[type(t.device).__name__] = metrics.snapshot()
        if t.last_error is not None:
            out[type(t.device).__name__ + ".error"] = str(t.last_error)
    return out


def post_mortem(machine) -> list[str]:
    """What a guest that never finished was doing, from the VMM's side: each vCPU's RIP,
    RFLAGS (IF) and run state, the UART's registers (a console stuck on a lost THRE
    interrupt looks like a dead guest), each virtio transport's status, ISR and ring
    positions with what is pending (a lost kick or interrupt). One line each, MM-HOST-STUCK."""
    out = []

    def line(what, fn):
        try:
            out.append(f"MM-HOST-STUCK {what} {fn()}")
        except Exception as exc:  # a post-mortem reports what it can
            out.append(f"MM-HOST-STUCK {what} unavailable: {type(exc).__name__}: {exc}")

    line("pause", lambda: machine.pause() or "ok")
    for t in machine.vcpus.threads if machine.vcpus is not None else ():
        line(f"vcpu{t.index}", lambda t=t: (lambda r: f"rip={r.rip:#x} rflags={r.rflags:#x} "
                                            f"mp_state={t.vcpu.get_mp_state()} state={t.state}")(t.vcpu.get_regs()))
    line("serial", lambda: machine.serial.save())
    for tr in machine.transports:
        act = tr.device.active
        line(type(tr.device).__name__,
             lambda tr=tr, act=act: f"{tr.save()} pending={[q.pending() for q in act.queues] if act else None}")
    return out


def run_guest(args) -> int:
    from vmm.machine import Machine, MachineConfig
    from vmm.worker.loop import Loop

    if args.vsock:
        os.makedirs(os.path.dirname(os.path.abspath(vsock_uds(args))), exist_ok=True)
    console = bytearray()
    events = Loop()
    threading.Thread(target=events.run, daemon=True).start()
    disks = tuple(args.disk) + tuple(f"{d}:ro" for d in args.ro_disk)
    cfg = MachineConfig(kernel=args.kernel, initrd=args.initrd, memory=args.memory << 20, cpus=args.cpus,
                        extra_cmdline=tuple(args.append), disks=disks, taps=tuple(args.tap), rng=args.rng,
                        vsock=args.vsock, balloon=args.balloon_spec)

    def on_console(data: bytes) -> None:
        console.extend(data)
        sys.stdout.buffer.write(data)
        sys.stdout.flush()

    m = Machine(cfg, console=on_console, events=events)
    hooks = HostHooks(m, console, args)
    try:
        hooks.start_servers()
        m.start()
        hooks.start()
        end = m.wait(args.timeout)
        hooks.join(5)
        print(f"\nMM-HOST exit={end.reason if end else 'timeout'}"
              + (f" detail={end.detail}" if end is not None and end.detail else ""))
        if end is None:
            hooks.report.extend(post_mortem(m))
        hooks.stop_servers()
        for line in hooks.report:
            print(line)
        print(f"MM-HOST-METRICS {json.dumps(device_metrics(m))}")
    finally:
        events.call_soon_threadsafe(events.stop)
        m.close()
    return 0 if end is not None and end.reason == "poweroff" else 1


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--kernel", required=True)
    p.add_argument("--initrd", required=True)
    p.add_argument("--memory", type=int, default=256, help="MiB")
    p.add_argument("--cpus", type=int, default=1)
    p.add_argument("--disk", action="append", default=[])
    p.add_argument("--ro-disk", action="append", default=[])
    p.add_argument("--tap", action="append", default=[])
    p.add_argument("--rng", action="store_true")
    p.add_argument("--vsock", help="CID:UDS_PATH")
    p.add_argument("--vsock-echo", type=int, help="echo server for guest streams to this host port")
    p.add_argument("--vsock-client", help="PORT:N:SIZE: N concurrent echo streams to the guest's port")
    p.add_argument("--tcp-echo", help="ADDR:PORT: TCP echo server for the guest")
    p.add_argument("--tcp-client", help="ADDR:PORT:N:SIZE: N concurrent TCP echo streams to the guest")
    p.add_argument("--ping", help="ping this guest address once the guest prints MM-NET-UP")
    p.add_argument("--balloon", type=int, default=0, help="MiB to inflate once the guest is ready")
    p.add_argument("--balloon-spec", help="attach a balloon (devices.virtio.config: MIB[,reporting=off])")
    p.add_argument("--balloon-watch", action="store_true", help="watch free page reporting return memory")
    p.add_argument("--timeout", type=float, default=RUN_TIMEOUT)
    p.add_argument("--append", action="append", default=["quiet"], help="kernel command-line words")
    args = p.parse_args(argv)
    if (args.balloon or args.balloon_watch) and args.balloon_spec is None:
        args.balloon_spec = "0"
    return run_guest(args)


if __name__ == "__main__":
    sys.exit(main())

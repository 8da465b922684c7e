"""Concurrent boots under load: how often a guest ends abnormally, ours vs QEMU microvm.

Boots N guests at once per contender (our `mm boot`, QEMU microvm on the same kernel and
initramfs), for R rounds, alternating contenders round by round, and classifies each end:
`ok` (the guest printed MM-DONE and rebooted), or how it ended otherwise (exit status,
the console's tail). Its purpose is telling a fault of our VMM from one of the host
under it: in the loaded lab (TCG emulating nested SVM) guests of both VMMs, and the
lab's own kernel, have died; if only ours do, the fault is ours.

Run it where real guests run (the lab on a PVM host), one at a time (it loads the lab):

    flock /tmp/mm-lab.lock mm lab exec -- .venv/bin/python -m benchmarks.boot.stress --n 8 --rounds 3

The guest: 300 console lines (the 8250 path), 32 MiB through tmpfs and sha256sum (memory
and CPU), then `reboot -f` (QEMU microvm cannot power off without ACPI; with -no-reboot
both VMMs end on a reboot).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SCRIPT = """
i=0; while [ $i -lt 300 ]; do echo "MM-LINE $i the quick brown fox jumps over the lazy dog"; i=$((i+1)); done
mount -t tmpfs -o size=64m tmpfs /tmp
dd if=/dev/urandom of=/tmp/f bs=1M count=32 2>/dev/null
echo "MM-SUM $(sha256sum /tmp/f | cut -c1-16)"
echo MM-DONE
reboot -f
"""


def _initramfs(work: Path) -> Path:
    from tests.e2e.virtio_guest import initramfs

    # The shared PRELUDE's epilogue (MM-DONE, poweroff) never runs: the script reboots first.
    return initramfs(work, SCRIPT)


def _argv(contender: str, kernel: str, initrd: Path, memory: int, qemu: str) -> list[str]:
    if contender == "mm":
        return [sys.executable, "-m", "vmm", "boot", "--kernel", kernel, "--initrd", str(initrd),
                "--memory", f"{memory}m", "--append", "quiet"]
    return [qemu, "-M", "microvm", "-accel", "kvm", "-cpu", "host", "-m", f"{memory}M", "-nodefaults",
            "-no-user-config", "-display", "none", "-serial", "stdio", "-no-reboot", "-kernel", kernel,
            "-initrd", str(initrd), "-append", "console=ttyS0 reboot=k panic=-1 quiet"]


def _round(contender: str, n: int, argv: list[str], work: Path, timeout: float) -> list[dict]:
    procs = []
    for i in range(n):
        out = open(work / f"{contender}-{i}.console", "wb+")
        procs.append((subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL),
                      out, time.monotonic()))
    ends = []
    deadline = time.monotonic() + timeout
    for p, out, t0 in procs:
        try:
            rc = p.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            rc = "timeout"
            p.wait()
        out.seek(0)
        console = out.read().decode(errors="replace")
        out.close()
        ok = "MM-DONE" in console and rc == 0 if contender == "qemu" else "MM-DONE" in console and rc in (0, 3)
        ends.append({"rc": rc, "ok": bool(ok), "seconds": round(time.monotonic() - t0, 1),
                     "tail": "" if ok else console[-1500:]})
    return ends


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=8, help="guests at once per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--memory", type=int, default=128, help="MiB per guest")
    ap.add_argument("--contenders", default="mm,qemu")
    ap.add_argument("--qemu", default="qemu-system-x86_64")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per round")
    ap.add_argument("--json", type=Path, help="write every end here")
    a = ap.parse_args(argv)
    from vmm.kernel import kernel_path

    kernel = str(kernel_path("vmlinux"))
    work = Path(tempfile.mkdtemp(prefix="mm-stress-"))
    initrd = _initramfs(work)
    results: dict[str, list[dict]] = {c: [] for c in a.contenders.split(",")}
    for r in range(a.rounds):
        for c in results:
            ends = _round(c, a.n, _argv(c, kernel, initrd, a.memory, a.qemu), work, a.timeout)
            results[c].extend(ends)
            bad = [e for e in ends if not e["ok"]]
            print(f"round {r} {c}: {a.n - len(bad)}/{a.n} ok, median "
                  f"{sorted(e['seconds'] for e in ends)[a.n // 2]} s", flush=True)
            for e in bad:
                print(f"  {c} ended rc={e['rc']}:\n" + "\n".join("    " + ln for ln in e["tail"].splitlines()[-12:]),
                      flush=True)
    for c, ends in results.items():
        print(f"{c}: {sum(e['ok'] for e in ends)}/{len(ends)} ok")
    if a.json:
        a.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

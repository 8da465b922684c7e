"""Side-by-side runner: the same workload under our VMM and under QEMU, alternating, N rounds.

    .venv/bin/python benchmarks/sidebyside.py boot --rounds 5 [--cpus 1] [--memory 256m] [--mm-code local|tree]
    mm lab exec -- .venv/bin/python benchmarks/sidebyside.py boot --rounds 5   # on a PVM host

A suite (SUITES) turns options into contenders: a name and the argv of one run. Each
round runs every contender once, the order swapped every round so neither always goes
first. A run's time to a marker line on its console and to its exit are measured from
process start; the result files are rewritten after every run, so a run cut short keeps
what it measured (marked partial). `--peer-cpus` (benchmarks/peer_cpus.py) gives QEMU the CPUs each of our
VMs gets: in the lab, one lab CPU per VM. `--gap S` sleeps S seconds before every run, so each starts on a quiet
host and neither side's leftover or background work (our fork server's spare preparing
the next VM's memory, vmm/prepared_ram.py) runs inside the other's clock. Results (median, p90, ours/QEMU ratio of medians) go to
benchmarks/results/<suite>-<UTC time>.json and .md. Later suites add themselves to SUITES.
"""
from __future__ import annotations

import argparse
import os
import platform
import selectors
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks import peer_cpus  # noqa: E402
from benchmarks.resultfiles import RESULTS, commit, percentile, utc_now, write_progress  # noqa: E402


@dataclass
class Contender:
    name: str
    argv: list[str]
    marker: str                    # console text that ends the "to marker" clock
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None         # where it runs (None: here)


@dataclass
class Run:
    contender: str
    round: int
    to_marker: float | None        # seconds from spawn to the marker line (None: never seen)
    to_exit: float | None          # seconds from spawn to process exit (None: killed)
    returncode: int | None
    guest_uptime: float | None = None   # what the guest said (boot suite)


def run_once(c: Contender, round_no: int, timeout: float, linger: float, prefix: tuple[str, ...] = ()) -> Run:
    """Spawn (`prefix` + its argv), watch stdout for the marker, wait for exit (at most
    `linger` s after the marker, then kill: a guest that cannot power off must not stall
    the benchmark)."""
    env = dict(os.environ, **c.env)
    start = time.monotonic()
    proc = subprocess.Popen([*prefix, *c.argv], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd=c.cwd)
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    buf, to_marker, deadline = b"", None, start + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        if not sel.select(min(left, 0.5)):
            if proc.poll() is not None:
                break
            continue
        chunk = os.read(proc.stdout.fileno(), 65536)
        if not chunk:
            break
        buf += chunk
        if to_marker is None and c.marker.encode() in buf:
            to_marker = time.monotonic() - start
            deadline = min(deadline, time.monotonic() + linger)
    try:
        proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        to_exit = time.monotonic() - start
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        to_exit = None
    sel.close()
    proc.stdout.close()
    return Run(c.name, round_no, to_marker, to_exit, proc.returncode if to_exit else None,
               _guest_uptime(buf.decode(errors="replace")))


def _guest_uptime(console: str) -> float | None:
    from benchmarks.boot.initramfs import parse_report

    return parse_report(console).get("uptime")


def summarize(runs: list[Run], names: list[str]) -> dict:
    out: dict = {}
    for metric in ("to_marker", "to_exit", "guest_uptime"):
        out[metric] = {}
        for name in names:
            vals = [getattr(r, metric) for r in runs if r.contender == name
                    and getattr(r, metric) is not None]
            out[metric][name] = ({"n": len(vals), "median": statistics.median(vals),
                                  "p90": percentile(vals, 90), "min": min(vals), "max": max(vals)}
                                 if vals else {"n": 0})
        if len(names) == 2 and all(out[metric][n].get("n") for n in names):
            ours, theirs = names
            out[metric]["ratio"] = out[metric][ours]["median"] / out[metric][theirs]["median"]
    return out


def markdown(suite: str, meta: dict, summary: dict, names: list[str]) -> str:
    lines = [f"# {suite}: {' vs '.join(names)}", "",
             f"{meta['when']} on {meta['host']} — {meta['rounds']} rounds, alternating; "
             f"{meta['details']}", "",
             "| metric | " + " | ".join(f"{n} median | {n} p90" for n in names) + " | ratio |",
             "| --- | " + " | ".join("--- | ---" for _ in names) + " | --- |"]
    for metric, row in summary.items():
        cells = []
        for n in names:
            s = row.get(n, {})
            cells += [f"{s['median']:.3f} s" if s.get("n") else "—",
                      f"{s['p90']:.3f} s" if s.get("n") else "—"]
        ratio = f"{row['ratio']:.2f}" if "ratio" in row else "—"
        lines.append(f"| {metric} (n={row.get(names[0], {}).get('n', 0)}) | " + " | ".join(cells)
                     + f" | {ratio} |")
    return "\n".join(lines) + "\n"


# -- suites ------------------------------------------------------------------------------

def _pvm_host() -> bool:
    return Path("/sys/module/kvm_pvm").exists()


def boot_suite(args) -> tuple[list[Contender], str]:
    """Boot-to-init of our guest kernel + the busybox initramfs: `mm boot` vs QEMU microvm."""
    from benchmarks.boot import initramfs
    from vmm import paths

    kernel = args.kernel
    if kernel is None:
        from vmm.kernel import kernel_path

        kernel = str(kernel_path("vmlinux"))
    rootfs = str(initramfs.build(paths.cache_dir() / "boot"))
    append = f"quiet mmaction=poweroff {args.append}".strip()
    mem_mib = _mib(args.memory)
    # `python -m vmm` imports vmm from its working directory first.
    code = str(REPO) if args.mm_code == "tree" else str(_local_code_copy())
    ours = Contender("mm", [sys.executable, "-m", "vmm", "boot", "--kernel", kernel, "--initrd", rootfs,
                            "--cpus", str(args.cpus), "--memory", f"{mem_mib}m", "--append", append],
                     initramfs.MARKER, cwd=code)
    cpu = "host,-arch-capabilities" if _pvm_host() else "host"
    qemu = Contender("qemu-microvm", [
        args.qemu, "-M", "microvm", "-accel", "kvm", "-cpu", cpu, "-smp", str(args.cpus),
        "-m", f"{mem_mib}M", "-nodefaults", "-no-user-config", "-display", "none",
        "-serial", "stdio", "-no-reboot", "-kernel", kernel, "-initrd", rootfs,
        "-append", f"console=ttyS0 reboot=k panic=-1 {append}"], initramfs.MARKER)
    details = (f"kernel {kernel}, {args.cpus} vCPU, {mem_mib} MiB, initramfs {rootfs}; "
               f"mm's code from {'the checkout' if args.mm_code == 'tree' else 'a local copy'} ({code})")
    return [ours, qemu], details


def _local_code_copy() -> Path:
    """Our packages (sources, their bytecode, the built extensions; mtimes kept, so the
    bytecode stays valid) copied into a fresh local temporary directory, removed at exit.

    Why: in the lab the checkout is an uncached 9p share, where each of the ~40 modules
    `mm boot` imports costs several round trips to the host (seconds in all, measured with
    benchmarks/boot/phases.py), while QEMU's binary and Python's stdlib come from the
    page-cached root share. An installed mm reads its code from local disk; this copy,
    made from the tree under test at the start of the run, measures that. `--mm-code tree`
    measures the checkout as it is."""
    import atexit
    import shutil
    import tempfile

    dest = Path(tempfile.mkdtemp(prefix="mm-bench-code-"))
    atexit.register(shutil.rmtree, dest, True)
    for package in ("vmm", "devices"):
        shutil.copytree(REPO / package, dest / package, ignore=shutil.ignore_patterns("*.c"))
    return dest


def _mib(text: str) -> int:
    units = {"k": 1 / 1024, "m": 1, "g": 1024}
    t = text.strip().lower().rstrip("b")
    if t and t[-1] in units:
        return int(float(t[:-1]) * units[t[-1]])
    return int(t) >> 20


def run_suite(args) -> tuple[list[Contender], str]:
    """`mm run --rm` of the default image vs QEMU microvm on the same kernel and root
    filesystem: to the workload's first output byte and end to end (benchmarks/cli/run_suite.py)."""
    from benchmarks.cli.run_suite import contenders

    return contenders(args, Contender, _mib)


SUITES = {"boot": boot_suite, "run": run_suite}

# Suites with their own workload and figures (benchmarks/virtio/harness.py runs them).
VIRTIO_SUITES = ("virtio-blk", "virtio-net", "virtio-vsock")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("suite", choices=sorted(SUITES) + sorted(VIRTIO_SUITES))
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--cpus", type=int, default=1)
    p.add_argument("--memory", default="256m")
    p.add_argument("--kernel", default=None)
    p.add_argument("--append", default="", help="extra kernel command line words (both sides)")
    p.add_argument("--qemu", default="qemu-system-x86_64")
    p.add_argument("--timeout", type=float, default=180.0, help="per run")
    p.add_argument("--linger", type=float, default=30.0, help="wait for exit after the marker")
    p.add_argument("--gap", type=float, default=0.0, help="seconds of quiet before every run (both sides)")
    p.add_argument("--warmup", type=int, default=0, help="unmeasured rounds first (caches, fork server)")
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--mm-code", choices=("local", "tree"), default="local",
                   help="boot suite: run mm from a local copy of the checkout (as installed) or from the checkout")
    p.add_argument("--seconds", type=int, default=8, help="virtio suites: seconds per workload")
    p.add_argument("--no-jail", action="store_true", help="run suite: mm run --no-jail")
    p.add_argument("--peer-cpus", choices=peer_cpus.CHOICES, default="same",
                   help="same: QEMU confined to CPUs as each of our VMs is (the lab: one CPU); any: unconfined; "
                        "split: every VM of both on one lab CPU, the harness and its clients on the others")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.suite in VIRTIO_SUITES:
        from benchmarks.virtio.harness import run_suite

        return run_suite(args.suite, args)
    contenders, details = SUITES[args.suite](args)
    peer_cpus.confine_harness(args.peer_cpus)
    details += f"; {peer_cpus.describe(args.peer_cpus)}"
    if args.gap:
        details += f"; {args.gap:g} s of quiet before every run"
    if args.warmup:
        details += f"; {args.warmup} unmeasured warm-up round(s) first"
    return _measure(args, contenders, details)


def _measure(args, contenders: list[Contender], details: str) -> int:
    """Warm-up rounds, then the measured ones, alternating; results saved after every run."""
    def prefix(c: Contender) -> tuple[str, ...]:
        return (peer_cpus.ours_prefix if c.name == "mm" else peer_cpus.peer_prefix)(args.peer_cpus)

    for c in contenders * args.warmup:
        time.sleep(args.gap)
        r = run_once(c, -1, args.timeout, args.linger, prefix(c))
        print(f"warm-up {c.name}: marker {r.to_marker} s, exit {r.to_exit} s (rc {r.returncode})", flush=True)
    names = [c.name for c in contenders]
    meta = {"suite": args.suite, "when": utc_now(), "host": platform.node(), "rounds": args.rounds,
            "details": details, "commit": commit(watched=("vmm", "devices", "benchmarks")),
            "argv": {c.name: c.argv for c in contenders}}
    runs: list[Run] = []

    def save() -> tuple[Path, str]:
        summary = summarize(runs, names)
        md = markdown(args.suite, meta, summary, names)
        data = {"meta": meta, "summary": summary, "runs": [asdict(r) for r in runs]}
        stem = write_progress(args.suite, meta["when"], meta, data, md, len(runs), args.rounds * len(contenders),
                              out=Path(args.out))
        return stem, md

    stem, md = save()
    for rnd in range(args.rounds):
        for c in (contenders if rnd % 2 == 0 else contenders[::-1]):
            time.sleep(args.gap)
            r = run_once(c, rnd, args.timeout, args.linger, prefix(c))
            runs.append(r)
            print(f"round {rnd} {c.name}: marker {r.to_marker} s, exit {r.to_exit} s "
                  f"(rc {r.returncode}), guest uptime {r.guest_uptime}", flush=True)
            stem, md = save()
    print(md)
    print(f"wrote {stem}.json and {stem}.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Runs one virtio suite (benchmarks/virtio/suites.py) side by side and writes its results.

Each round boots each contender once (the order swapped every round), runs the suite's
workload against it and records the figures; a failed run is recorded with its error and
left out of the statistics. Summary per metric: median and p90 per contender and the
ratio of medians oriented so that > 1 favours us (ours/peer where higher is better,
peer/ours where lower is). Called by benchmarks/sidebyside.py for the virtio-* suites.
"""
from __future__ import annotations

import platform
import statistics
import time
from pathlib import Path

from benchmarks import peer_cpus
from benchmarks.resultfiles import commit, percentile, utc_now, write_progress
from benchmarks.virtio.guestvm import BenchError, GuestProcess
from benchmarks.virtio.suites import OURS, PEER, SUITES, WORK


def run_once(suite, name: str, argv: list[str], prefix: tuple, timeout: float) -> dict:
    vm = GuestProcess(name, argv, prefix=prefix)
    try:
        figures = suite.workload(vm)
        rc = vm.finish(timeout=60)
        return {"contender": name, "figures": figures, "rc": rc, "error": None}
    except (BenchError, OSError, ValueError, KeyError) as e:
        vm.kill()
        return {"contender": name, "figures": {}, "rc": None, "error": f"{type(e).__name__}: {e}",
                "console_tail": vm.text()[-2000:]}


def summarize(suite, runs: list[dict]) -> dict:
    out = {}
    for metric, (unit, better) in suite.metrics.items():
        row: dict = {"unit": unit, "better": better}
        for name in (OURS, PEER):
            vals = [r["figures"][metric] for r in runs if r["contender"] == name and metric in r["figures"]]
            row[name] = ({"n": len(vals), "median": statistics.median(vals), "p90": percentile(vals, 90),
                          "min": min(vals), "max": max(vals)} if vals else {"n": 0})
        if row[OURS].get("n") and row[PEER].get("n"):
            ours, peer = row[OURS]["median"], row[PEER]["median"]
            row["ratio"] = ours / peer if better == "higher" else peer / ours
        out[metric] = row
    return out


def markdown(suite, meta: dict, summary: dict, runs: list[dict]) -> str:
    lines = [f"# {suite.name}: {OURS} vs {PEER}", "",
             f"{meta['when']} on {meta['host']} — {meta['rounds']} rounds, alternating; {meta['details']}.",
             "Ratio: ours/QEMU for higher-is-better, QEMU/ours for lower-is-better (> 1 favours us).", "",
             f"| metric | {OURS} median | {OURS} p90 | {PEER} median | {PEER} p90 | ratio |",
             "| --- | --- | --- | --- | --- | --- |"]
    for metric, row in summary.items():
        cells = []
        for name in (OURS, PEER):
            s = row[name]
            cells += [f"{s['median']:.1f} {row['unit']}" if s.get("n") else "—",
                      f"{s['p90']:.1f}" if s.get("n") else "—"]
        ratio = f"{row['ratio']:.2f}" if "ratio" in row else "—"
        lines.append(f"| {metric} (n={row[OURS].get('n', 0)}/{row[PEER].get('n', 0)}) | " + " | ".join(cells)
                     + f" | {ratio} |")
    failed = [r for r in runs if r["error"]]
    if failed:
        lines += ["", "Failed runs:"] + [f"- round {r['round']} {r['contender']}: {r['error'].splitlines()[0]}"
                                          for r in failed]
    return "\n".join(lines) + "\n"


def run_suite(name: str, args) -> int:
    """`args`: the sidebyside.py options (rounds, cpus, memory, kernel, append, qemu, timeout,
    out, peer_cpus, gap, warmup) plus `seconds` (per workload)."""
    from vmm.kernel import kernel_path

    args.kernel = args.kernel or str(kernel_path("vmlinux"))
    args.mem_mib = max(_mib(args.memory), 1024)  # fio's libraries make a ~90 MiB initramfs
    args.guest_append = f"quiet {args.append}".strip()
    args.seconds = getattr(args, "seconds", None) or 8
    WORK.mkdir(parents=True, exist_ok=True)
    suite = SUITES[name](args)
    details = suite.setup()
    peer_cpus.confine_harness(args.peer_cpus)
    details += f"; {peer_cpus.describe(args.peer_cpus)}"
    if args.gap:
        details += f"; {args.gap:g} s of quiet before every run"
    if args.warmup:
        details += f"; {args.warmup} unmeasured warm-up round(s) first"
    meta = {"suite": name, "when": utc_now(), "host": platform.node(), "rounds": args.rounds,
            "details": f"kernel {args.kernel}, {args.cpus} vCPU, {args.mem_mib} MiB; {details}",
            "commit": commit(watched=("vmm", "devices", "benchmarks"))}
    runs: list[dict] = []
    contenders = []

    def save() -> tuple[Path, str]:
        summary = summarize(suite, runs)
        md = markdown(suite, meta, summary, runs)
        data = {"meta": meta, "summary": summary, "runs": runs}
        stem = write_progress(name, meta["when"], meta, data, md, len(runs), args.rounds * len(contenders),
                              out=Path(args.out))
        return stem, md

    def one(cname: str, argv: list[str], prefix: tuple) -> dict:
        time.sleep(args.gap)
        confine = (peer_cpus.peer_prefix if cname == PEER else peer_cpus.ours_prefix)(args.peer_cpus)
        return run_once(suite, cname, argv, (*confine, *prefix), args.timeout)

    try:
        contenders = suite.contenders()
        meta["argv"] = {c: a for c, a, _ in contenders}
        for cname, argv, prefix in contenders * args.warmup:
            r = one(cname, argv, prefix)
            print(f"warm-up {cname}: {r['figures'] or r['error']}", flush=True)
        for rnd in range(args.rounds):
            for cname, argv, prefix in (contenders if rnd % 2 == 0 else contenders[::-1]):
                r = one(cname, argv, prefix)
                r["round"] = rnd
                runs.append(r)
                print(f"round {rnd} {cname}: {r['figures'] or r['error']}", flush=True)
                save()
    finally:
        suite.teardown()
    stem, md = save()
    print(md)
    print(f"wrote {stem}.json and {stem}.md")
    return 0 if not any(r["error"] for r in runs) else 1


def _mib(text: str) -> int:
    units = {"k": 1 / 1024, "m": 1, "g": 1024}
    t = text.strip().lower().rstrip("b")
    if t and t[-1] in units:
        return int(float(t[:-1]) * units[t[-1]])
    return int(t) >> 20

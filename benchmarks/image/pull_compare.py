"""Issue 6's image numbers, contenders alternating, written to benchmarks/results/image-<UTC>.md/.json.

    .venv/bin/python benchmarks/image/pull_compare.py --rounds 7
    git archive REV vmm | tar -x -C /tmp/REV    # then --before /tmp/REV: that tree pulls too

- pull: the ~100 MB image (benchmarks/image/bigimage.py) from a docker-registry on
  127.0.0.1, into an empty destination each time, as a user runs it: `mm image pull -q`
  (a fresh process, fresh MM_CACHE) against `skopeo copy docker://... oci:DIR:TAG`; the
  same pull in a fresh `python -S` without typer (what a hand-parsed fast path would
  cost), and in-process (vmm.image.pull.pull): these show what process start and CLI
  framework cost. Every round runs each once, the order rotated per round, so a
  shared host's load drifts fall on all alike. Ratio = skopeo's median / ours (≥ 1.0: ours
  is faster). Both verify every blob's sha256; ours also fsyncs each blob before it
  becomes visible (skopeo does not). CPU seconds (user+sys of the contender's process,
  or of this one for the in-process pull; the registry's not counted) are steadier than
  wall time on a loaded host.
- rootfs build: vmm.image.rootfs.build of the pulled image (ext4 and erofs, alternating),
  per 100 MB of compressed layer bytes and of uncompressed tar bytes.
- cached resolve: `resolve(ref, pull=False).rootfs_path` of the pulled and built image,
  in-process (warm, many calls) and as the first call in a fresh interpreter (its lazy
  imports included, the interpreter's own start not).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import struct
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from benchmarks.image.bigimage import NAME, TAG, ensure_layout  # noqa: E402
from benchmarks.resultfiles import RESULTS, commit, utc_now, write  # noqa: E402
from tests.image.conftest import Registry  # noqa: E402

MM = str(Path(sys.executable).with_name("mm"))
RESOLVE_TARGET_MS = 20.0
# `mm image pull`'s work in a fresh `python -S` set up as the mm launcher is, without the CLI
# framework (typer): what the command would cost with a hand-parsed fast path like `mm run`'s.
BARE = "pull in a fresh python -S, no CLI framework"
BARE_PULL = """
import sys
sys.path[1:1] = sys.argv[2:4]
from vmm.image import Store, parse
from vmm.image.pull import pull
print(pull(parse(sys.argv[1]), Store(), quiet=True))
"""
# `mm` run from another tree (an older commit's vmm/, e.g. from `git archive REV vmm`), set up
# as the launcher sets up ours: the before/after figure of a change in the same run.
BEFORE_CLI = """
import sys
sys.path[1:1] = sys.argv[1:3]
del sys.argv[1:3]
from vmm.cli.main import main
sys.exit(main())
"""
FRESH_RESOLVE = """
import os, sys, time
t = time.perf_counter()
from vmm.image import resolve
resolve(sys.argv[1], pull=False).rootfs_path
print((time.perf_counter() - t) * 1e3)
"""


def stats(values: list[float]) -> dict[str, float]:
    v = sorted(values)
    return {"n": len(v), "median": statistics.median(v), "min": v[0], "max": v[-1]} if v else {"n": 0}


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def cpu_seconds() -> float:
    """User + system CPU of this process (all threads) and of its waited-for children."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def pull_rounds(reg: Registry, work: Path, rounds: int, before: Path | None = None) -> tuple[dict, dict]:
    """Wall seconds and CPU seconds (the contender's process, or this one's threads) per contender."""
    ref = f"{reg.host}/{NAME}:{TAG}"
    env = {**os.environ, "MM_CACHE": str(work / "mm-cache")}

    def mm_cli():
        subprocess.run([MM, "image", "pull", "-q", ref], env=env, check=True, stdout=subprocess.DEVNULL)

    def skopeo():
        subprocess.run(["skopeo", "copy", "--quiet", "--src-tls-verify=false", f"docker://{ref}",
                        f"oci:{work / 'oci'}:{TAG}"], check=True)

    def mm_bare():
        subprocess.run([sys.executable, "-S", "-c", BARE_PULL, ref, str(REPO), sysconfig.get_paths()["purelib"]],
                       env=env, check=True, stdout=subprocess.DEVNULL)

    def mm_inproc():
        from vmm.image import Store, parse
        from vmm.image.pull import pull

        pull(parse(ref), Store(work / "mm-cache" / "images"), quiet=True)

    def mm_before():
        subprocess.run([sys.executable, "-S", "-c", BEFORE_CLI, str(before), sysconfig.get_paths()["purelib"],
                        "image", "pull", "-q", ref], env=env, check=True, stdout=subprocess.DEVNULL)

    contenders = {"mm image pull": mm_cli, "skopeo copy": skopeo, BARE: mm_bare, "mm pull (in-process)": mm_inproc}
    if before:
        contenders[f"mm image pull, tree {before.name} (before)"] = mm_before
    times: dict[str, list[float]] = {name: [] for name in contenders}
    cpu_times: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    for rnd in range(-1, rounds):  # round -1 is a warm-up (page cache, registry), not recorded
        order = names[rnd % len(names):] + names[:rnd % len(names)]
        for name in order:
            shutil.rmtree(work / "mm-cache", ignore_errors=True)
            shutil.rmtree(work / "oci", ignore_errors=True)
            subprocess.run(["sync"], check=True)  # the previous contender's writeback is not ours to pay
            cpu = cpu_seconds()
            elapsed = timed(contenders[name])
            if rnd >= 0:
                times[name].append(elapsed)
                cpu_times[name].append(cpu_seconds() - cpu)
        done = ", ".join(f"{n} {times[n][-1]:.2f}s" for n in names) if rnd >= 0 else "warm-up"
        print(f"round {rnd}: {done}", file=sys.stderr)
    return times, cpu_times


def layer_sizes(store, img) -> tuple[int, int]:
    """(compressed, uncompressed) bytes of the image's gzip layers (ISIZE trailer: < 4 GiB each)."""
    packed = unpacked = 0
    for layer in img.layers:
        path = store.blob_path(layer["digest"])
        packed += path.stat().st_size
        with open(path, "rb") as fh:
            fh.seek(-4, os.SEEK_END)
            unpacked += struct.unpack("<I", fh.read(4))[0]
    return packed, unpacked


def build_rounds(reg: Registry, work: Path, rounds: int) -> tuple[dict[str, list[float]], tuple[int, int]]:
    from vmm.image import Store, resolve
    from vmm.image.rootfs import build

    store = Store(work / "build-cache" / "images")
    img = resolve(f"{reg.host}/{NAME}:{TAG}", store=store)
    times: dict[str, list[float]] = {"ext4": [], "erofs": []}
    for rnd in range(rounds):
        for fmt in (["ext4", "erofs"] if rnd % 2 == 0 else ["erofs", "ext4"]):
            img.rootfs_file(fmt).unlink(missing_ok=True)
            subprocess.run(["sync"], check=True)
            times[fmt].append(timed(lambda: build(store, img.digest, img.layer_pairs(), fmt)))
    return times, layer_sizes(store, img)


def cli_floor(work: Path, rounds: int) -> dict[str, list[float]]:
    """Wall ms of commands that do next to no work, alternating: what start-up and the CLI
    framework cost before any pulling (`mm image ls` goes through typer, `--version` not)."""
    env = {**os.environ, "MM_CACHE": str(work / "floor-cache")}
    cmds = {"mm image ls (typer)": [MM, "image", "ls"], "mm --version (no typer)": [MM, "--version"],
            "python -S -c pass": [sys.executable, "-S", "-c", "pass"]}
    out: dict[str, list[float]] = {name: [] for name in cmds}
    for _ in range(rounds):
        for name, cmd in cmds.items():
            out[name].append(timed(lambda: subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)) * 1e3)
    return out


def resolve_figures(reg: Registry, work: Path, calls: int, fresh: int) -> dict[str, list[float]]:
    from vmm.image import Store, resolve

    ref = f"{reg.host}/{NAME}:{TAG}"
    store = Store(work / "build-cache" / "images")
    resolve(ref, store=store).rootfs_path  # noqa: B018 - built by build_rounds; a stat here
    warm = [timed(lambda: resolve(ref, pull=False, store=store).rootfs_path) * 1e3 for _ in range(calls)]
    env = {**os.environ, "MM_CACHE": str(work / "build-cache")}
    cold = [float(subprocess.run([sys.executable, "-c", FRESH_RESOLVE, ref], env=env, check=True,
                                 capture_output=True, text=True, cwd=REPO).stdout) for _ in range(fresh)]
    return {"warm_ms": warm, "fresh_process_ms": cold}


def fmt_s(s: dict) -> str:
    return f"{s['median']:.3f} s ({s['min']:.3f}–{s['max']:.3f})"


def report(meta: dict, pulls: dict, pull_cpu: dict, builds: dict, sizes: tuple[int, int],
           resolves: dict) -> tuple[dict, str]:
    summary = {"pull_s": {k: stats(v) for k, v in pulls.items()},
               "pull_cpu_s": {k: stats(v) for k, v in pull_cpu.items()},
               "rootfs_build_s": {k: stats(v) for k, v in builds.items()},
               "resolve_ms": {k: stats(v) for k, v in resolves.items()}}
    p = summary["pull_s"]
    ratio = p["skopeo copy"]["median"] / p["mm image pull"]["median"]
    ratio_inproc = p["skopeo copy"]["median"] / p["mm pull (in-process)"]["median"]
    ratio_bare = p["skopeo copy"]["median"] / p[BARE]["median"]
    packed, unpacked = sizes
    per100 = {fmt: {"s_per_100MB_compressed": s["median"] * 1e8 / packed,
                    "s_per_100MB_uncompressed": s["median"] * 1e8 / unpacked}
              for fmt, s in summary["rootfs_build_s"].items()}
    summary["ratio_skopeo_over"] = {name: p["skopeo copy"]["median"] / st["median"] for name, st in p.items()}
    summary.update(ratio_skopeo_over_mm=ratio, ratio_skopeo_over_mm_inprocess=ratio_inproc,
                   ratio_skopeo_over_mm_bare_process=ratio_bare,
                   layer_bytes_compressed=packed, layer_bytes_uncompressed=unpacked, rootfs_build_per_100MB=per100)
    load = meta["loadavg"]
    lines = [f"# image: pull vs skopeo copy, rootfs build, cached resolve ({meta['when']}, {meta['host']})", "",
             f"`{meta['command']}` at commit {meta['commit']}; {meta['cpus']} CPUs; load (1-min) "
             f"{load['start'][0]:.2f} at the start, {load['after_pulls'][0]:.2f} after the pulls, "
             f"{load['end'][0]:.2f} at the end. {meta['tools']}.", "",
             f"Image: {len(meta['layers'])} gzip layers, {packed / 1e6:.1f} MB compressed, {unpacked / 1e6:.1f} MB "
             f"uncompressed; docker-registry on 127.0.0.1, page cache warm (one unrecorded warm-up round).", "",
             "## Pull (contenders alternating, order rotated every round; empty destination each time)", "",
             "| contender | n | median | min–max | skopeo / this (medians) | CPU median (user+sys) |",
             "| --- | --- | --- | --- | --- | --- |"]
    cpu = summary["pull_cpu_s"]
    lines += [f"| {name} | {s['n']} | {s['median']:.3f} s | {s['min']:.3f}–{s['max']:.3f} s | "
              f"{p['skopeo copy']['median'] / s['median']:.2f} | {cpu[name]['median']:.3f} s |" for name, s in p.items()]
    lines += ["", f"**Ratio skopeo / mm image pull (medians): {ratio:.2f}** (target ≥ 1.0 in our favour); "
              f"skopeo / the same pull in a fresh python without the CLI framework: {ratio_bare:.2f}; "
              f"skopeo / in-process pull: {ratio_inproc:.2f}.", "",
              "## Root filesystem build (vmm.image.rootfs.build: unpack all layers + mkfs; alternating)", "",
              "| format | n | median | min–max | per 100 MB compressed | per 100 MB uncompressed |",
              "| --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {fmt} | {s['n']} | {s['median']:.3f} s | {s['min']:.3f}–{s['max']:.3f} s | "
              f"{per100[fmt]['s_per_100MB_compressed']:.3f} s | {per100[fmt]['s_per_100MB_uncompressed']:.3f} s |"
              for fmt, s in summary["rootfs_build_s"].items()]
    r = summary["resolve_ms"]
    lines += ["", "## Resolving the cached image to its root filesystem (target ≤ 20 ms)", "",
              "| how | n | median | min–max |", "| --- | --- | --- | --- |",
              f"| in-process, warm | {r['warm_ms']['n']} | {r['warm_ms']['median']:.3f} ms | "
              f"{r['warm_ms']['min']:.3f}–{r['warm_ms']['max']:.3f} ms |",
              f"| first call in a fresh interpreter (imports included) | {r['fresh_process_ms']['n']} | "
              f"{r['fresh_process_ms']['median']:.1f} ms | {r['fresh_process_ms']['min']:.1f}–"
              f"{r['fresh_process_ms']['max']:.1f} ms |", ""]
    floor = summary["cli_floor_ms"] = {k: stats(v) for k, v in meta.pop("cli_floor").items()}
    lines += ["## Start-up floor (wall, alternating)", "", "| command | n | median | min–max |",
              "| --- | --- | --- | --- |"]
    lines += [f"| {k} | {f['n']} | {f['median']:.1f} ms | {f['min']:.1f}–{f['max']:.1f} ms |" for k, f in floor.items()]
    cli, bare = p["mm image pull"], p[BARE]
    lines += ["", f"`mm image pull` − the same pull without the CLI framework: {cli['median'] - bare['median']:.3f} s "
              f"wall, {cpu['mm image pull']['median'] - cpu[BARE]['median']:.3f} s CPU (medians).", ""]
    if meta.get("notes"):
        lines += ["## Notes", "", meta["notes"], ""]
    return summary, "\n".join(lines)


def _shown_args(args: list[str]) -> list[str]:
    """The command line as recorded: the --notes text is in its own section, not repeated."""
    shown, skip = [], False
    for arg in args:
        if skip:
            shown.append('"<the notes below>"')
            skip = False
        elif arg == "--notes":
            shown.append(arg)
            skip = True
        elif arg.startswith("--notes="):
            shown.append('--notes="<the notes below>"')
        else:
            shown.append(arg)
    return shown


def tools() -> str:
    skopeo = subprocess.run(["skopeo", "--version"], capture_output=True, text=True).stdout.strip()
    reg = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "docker-registry"], capture_output=True,
                         text=True).stdout.strip()
    return f"{skopeo}; docker-registry {reg or '?'}; Python {platform.python_version()}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=7, help="pull rounds (each contender once per round)")
    ap.add_argument("--build-rounds", type=int, default=5)
    ap.add_argument("--resolve-calls", type=int, default=200)
    ap.add_argument("--fresh-resolves", type=int, default=10)
    ap.add_argument("--floor-rounds", type=int, default=15)
    ap.add_argument("--notes", default="", help="a paragraph for the results file")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--before", type=Path, help="a directory holding another tree's vmm/ to pull with as well")
    args = ap.parse_args(argv)
    when = utc_now()
    loads = {"start": os.getloadavg()}
    layout = ensure_layout()
    with tempfile.TemporaryDirectory(prefix="mm-image-bench-") as tmp:
        work = Path(tmp)
        (work / "registry").mkdir()
        reg = Registry(work / "registry")
        try:
            reg.push(layout, NAME, TAG)
            pulls, pull_cpu = pull_rounds(reg, work, args.rounds, args.before)
            loads["after_pulls"] = os.getloadavg()
            builds, sizes = build_rounds(reg, work, args.build_rounds)
            resolves = resolve_figures(reg, work, args.resolve_calls, args.fresh_resolves)
            floor = cli_floor(work, args.floor_rounds)
        finally:
            reg.stop()
    loads["end"] = os.getloadavg()
    index = json.loads((layout / "index.json").read_text())["manifests"][0]
    manifest = json.loads((layout / "blobs/sha256" / index["digest"][7:]).read_text())
    meta = {"suite": "image", "when": when, "host": platform.node(), "cpus": os.cpu_count(),
            "command": " ".join([".venv/bin/python", "benchmarks/image/pull_compare.py",
                                 *_shown_args(argv if argv is not None else sys.argv[1:])]),
            "commit": commit(("vmm/image", "benchmarks/image"), "vmm/image or benchmarks/image modified"), "loadavg": loads, "tools": tools(), "layers": manifest["layers"],
            "notes": args.notes, "cli_floor": floor}
    summary, md = report(meta, pulls, pull_cpu, builds, sizes, resolves)
    raw = {"pull_s": pulls, "pull_cpu_s": pull_cpu, "rootfs_build_s": builds, "resolve_ms": resolves,
           "cli_floor_ms": floor}
    stem = write("image", when, {"meta": meta, "summary": summary, "raw": raw}, md, indent=1, out=args.out)
    print(md)
    print(f"wrote {stem}.md and .json", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

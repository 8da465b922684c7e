"""A benchmark's results pair, benchmarks/results/<kind>-<UTC time>.json and .md, and the
facts each one records about the run: when (UTC), the host, the commit; the nearest-rank
percentile their summaries use; and `write_progress` for runs that save after every step.

    when = utc_now()
    meta = {"when": when, **host_facts(), "commit": commit(watched=("vmm/network",), note="vmm/network modified")}
    write("network", when, {"meta": meta, "figures": figures}, markdown_text)

A run of an older tree with a copied-in benchmark (an A/B) needs this file copied too."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty list: the summaries' p90."""
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(round(p / 100 * len(s) + 0.5)) - 1))
    return s[k]


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def host_facts() -> dict:
    return {"host": platform.node(), "cpus": os.cpu_count(), "kernel": platform.release()}


def _git(repo: Path, *args: str) -> str | None:
    try:
        res = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout.strip() if res.returncode == 0 else None


def commit(watched: tuple[str, ...] = (), note: str = "modified", repo: Path = REPO) -> str | None:
    """The short commit of `repo`, with " (note)" when a `watched` path has uncommitted
    changes (the figures are then not that commit's); None outside a git checkout."""
    rev = _git(repo, "rev-parse", "--short", "HEAD")
    if rev and watched and _git(repo, "status", "--porcelain", "--", *watched):
        rev += f" ({note})"
    return rev or None


def write(kind: str, when: str, data: dict, markdown: str, indent: int = 2, out: Path = RESULTS) -> Path:
    """Writes <out>/<kind>-<when without colons>.json (data) and .md; returns the stem."""
    stem = out / f"{kind}-{when.replace(':', '')}"
    out.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(data, indent=indent) + "\n")
    stem.with_suffix(".md").write_text(markdown)
    return stem


def write_progress(kind: str, when: str, meta: dict, data: dict, markdown: str, done: int, total: int,
                   out: Path = RESULTS) -> Path:
    """write() for a run that saves after each of its `total` steps, `done` of them
    finished so far, so a run cut short (the lab's hang) leaves what it measured: `meta`
    (also data["meta"]) gets "complete", and an unfinished run's markdown says it is partial."""
    meta["complete"] = done == total
    if done != total:
        markdown += f"\nPartial: {done} of {total} runs so far.\n"
    return write(kind, when, data, markdown, out=out)

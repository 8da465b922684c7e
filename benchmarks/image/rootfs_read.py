"""Guest read speed of the two root filesystem formats (issue 6): erofs vs ext4.

    mm lab exec -- .venv/bin/python benchmarks/image/rootfs_read.py --rounds 3   # on a PVM host
    .venv/bin/python benchmarks/image/rootfs_read.py --rounds 3                  # hardware KVM

Builds one tree (400 files of 256 KiB, half random, half text: 100 MiB, plus 2,000
small files), makes an erofs and an ext4 image of it with `vmm.image.rootfs.make_fs`
(the code `mm image` uses), then boots our guest kernel with `mm boot` and a busybox
initramfs that mounts the image read-only as /dev/vda and times, from inside the guest,
reading every byte (`tar c . | wc -c`, cold cache) and a metadata walk (`find | wc -l`).
Formats alternate every round. Results: benchmarks/results/rootfs-read-<time>.{json,md}.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from vmm.image.rootfs import make_fs  # noqa: E402
from vmm.lab.cpio import CpioWriter  # noqa: E402

BUSYBOX = Path("/bin/busybox")
INIT = """#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mkdir -p /proc /dev /mnt
mount -t proc proc /proc
mount -t devtmpfs dev /dev
t() { cut -d' ' -f1 /proc/uptime; }
mount -t $fstype -o ro /dev/vda /mnt || echo MM-MOUNT-FAILED
cd /mnt
a=$(t); n=$(find . | wc -l); b=$(t)
bytes=$(tar c . 2>/dev/null | wc -c); c=$(t)
echo "MM-READ fstype=$fstype entries=$n walk_start=$a walk_end=$b read_end=$c bytes=$bytes"
cd /; umount /mnt
poweroff -f
"""


def build_tree(root: Path) -> None:
    rng = random.Random(6)
    words = [bytes(rng.choice(b"abcdefghij ") for _ in range(64)) for _ in range(256)]
    for i in range(400):
        d = root / f"big{i % 8}"
        d.mkdir(exist_ok=True)
        text = b"".join(rng.choice(words) for _ in range(2048))
        (d / f"f{i}").write_bytes(rng.randbytes(128 << 10) + text)
    for i in range(2000):
        d = root / "small" / f"d{i % 50}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"s{i}").write_bytes(rng.randbytes(rng.randint(100, 4000)))


def initramfs(path: Path) -> None:
    buf = io.BytesIO()
    w = CpioWriter(buf)
    for d in ("bin", "dev", "proc", "mnt"):
        w.mkdir(d)
    w.chardev("dev/console", 5, 1)
    w.add_path("bin/busybox", BUSYBOX, 0o755)
    w.file("init", INIT.encode(), 0o755)
    w.close()
    path.write_bytes(buf.getvalue())


def boot(kernel: str, initrd: Path, image: Path, fstype: str) -> dict:
    argv = [str(REPO / ".venv/bin/mm"), "boot", "--kernel", kernel, "--initrd", str(initrd), "--memory", "512m",
            "--disk", f"{image}:ro", "--append", "quiet", "--append", f"fstype={fstype}"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL).stdout
    m = re.search(r"MM-READ (.*)", out)
    if not m:
        raise RuntimeError(f"no MM-READ line from the {fstype} guest:\n{out[-3000:]}")
    f = dict(kv.split("=") for kv in m.group(1).split())
    return {"fstype": fstype, "entries": int(f["entries"]), "bytes": int(f["bytes"]),
            "walk_s": float(f["walk_end"]) - float(f["walk_start"]),
            "read_s": float(f["read_end"]) - float(f["walk_end"])}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    from vmm.kernel import kernel_path

    kernel = str(kernel_path())
    with tempfile.TemporaryDirectory(dir=os.environ.get("MM_BENCH_TMP")) as tmp:
        tmp = Path(tmp)
        tree = tmp / "tree"
        tree.mkdir()
        build_tree(tree)
        images = {}
        for fmt in ("erofs", "ext4"):
            images[fmt] = tmp / f"root.{fmt}"
            t0 = time.monotonic()
            make_fs(tree, images[fmt], fmt)
            print(f"{fmt}: built in {time.monotonic() - t0:.2f} s, {images[fmt].stat().st_size >> 20} MiB file",
                  flush=True)
        initrd = tmp / "init.cpio"
        initramfs(initrd)
        runs = []
        for r in range(args.rounds):
            for fmt in (("erofs", "ext4") if r % 2 == 0 else ("ext4", "erofs")):
                res = boot(kernel, initrd, images[fmt], fmt)
                print(f"round {r} {fmt}: read {res['bytes'] >> 20} MiB in {res['read_s']:.2f} s, "
                      f"walk {res['entries']} entries in {res['walk_s']:.2f} s", flush=True)
                runs.append({**res, "round": r})
    report(runs, args.rounds)
    return 0


def report(runs: list[dict], rounds: int) -> None:
    stamp = time.strftime("%Y-%m-%dT%H%M%SZ", time.gmtime())
    rows = []
    for metric in ("read_s", "walk_s"):
        med = {f: statistics.median(r[metric] for r in runs if r["fstype"] == f) for f in ("erofs", "ext4")}
        rows.append(f"| {metric} | {med['erofs']:.3f} s | {med['ext4']:.3f} s | {med['ext4'] / med['erofs']:.2f} |")
    nbytes = runs[0]["bytes"]
    md = "\n".join([
        "# rootfs read: erofs vs ext4 in the guest", "",
        f"{stamp} on {os.uname().nodename}: {rounds} rounds alternating, {nbytes >> 20} MiB read cold "
        "through virtio-blk (`tar c . | wc -c`), metadata walk `find | wc -l`.", "",
        "| metric | erofs median | ext4 median | ext4/erofs |", "| --- | --- | --- | --- |", *rows, ""])
    out = REPO / "benchmarks" / "results" / f"rootfs-read-{stamp}"
    out.with_suffix(".json").write_text(json.dumps({"runs": runs}, indent=1))
    out.with_suffix(".md").write_text(md)
    print(md)


if __name__ == "__main__":
    sys.exit(main())

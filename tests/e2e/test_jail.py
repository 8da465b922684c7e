"""The jail around a real guest's VMM, seen from the host, through `mm run` as a user
types it (the lab on a PVM host): the tiny-guest tests (tests/worker/test_jail.py) show
that each wall holds; these show the walls are really in place around a real Linux guest
and that every feature still works inside them.

Two boots from the default busybox image, in a private store (tests/e2e/mm_shell.py):

| machine | options | checks |
| --- | --- | --- |
| jl | `-m 256m --cpus 1.5 --pids-limit 90 -p 127.0.0.1:PORT:80`, default network, httpd | the VMM's ids, capabilities, no_new_privs, seccomp on every thread, namespaces, its cell, its cgroup's limits; block (overlay and root disks), vsock (workload stdio, exec, cp), network (published port, ping), logs; a graceful stop (143) leaves no VMM, cgroup or socket |
| oom | `-m 512m`, MM_JAIL_MEMORY=256m, `--network none` | the guest fills 400 MiB of tmpfs: the kernel OOM-kills the VMM at its cgroup limit; `mm run` says so and exits 137, `mm inspect`/`ps -a` say reason "oom" |

The documented outcome of a VMM outgrowing its cgroup is in vmm/jail/cgroups.py. The
jail's set-up time and throughput with and without it are benchmarks
(benchmarks/jail/), not assertions here.
"""
from __future__ import annotations

import os
import random

import pytest

from tests.e2e.mm_shell import IMAGE, MMShell, explain, values
from vmm.jail.config import JAIL_ID_BASE, MEMORY_ENV

pytestmark = [
    pytest.mark.skipif(os.environ.get("MM_E2E_NO_JAIL") == "1",
                       reason="MM_E2E_NO_JAIL=1 runs machines unjailed; these tests are about the jail"),
    # A boot plus a Python start-up per `mm` call under TCG: the first test took ~6 min
    # in a lab shared with three other sessions.
    pytest.mark.timeout(1200),
]

MiB = 1 << 20
PAGE = "hello-through-the-jail"
WORKLOAD = ("echo jail-stdout; echo jail-stderr >&2; echo overlay-at-boot > /root/at-boot; "
            f"mkdir -p /www && echo {PAGE} > /www/index.html && exec httpd -f -p 80 -h /www")
# bash: the VMM (the supervisor's only child) of machine jl, its cgroup limits on v2 or
# v1, and the facts the first test asserts, as key=value words and files in $OUT.
FACTS = r"""
sup=$(jq -r .pid inspect.json); id=$(jq -r .id inspect.json); short=${id:0:12}
vmm=$(pgrep -P "$sup"); echo "sup=$sup vmm_count=$(echo $vmm | wc -w)"; echo "$vmm" > vmm.pid
cp "/proc/$vmm/status" vmm.status
for t in /proc/$vmm/task/*; do grep '^Seccomp:' "$t/status"; done | sort | uniq -c > threads.txt
for n in mnt pid ipc uts net cgroup; do
    [ "$(readlink /proc/$vmm/ns/$n)" = "$(readlink /proc/self/ns/$n)" ] && echo "ns_$n=host" || echo "ns_$n=own"
done
[ "$(stat -L -c %i /proc/$vmm/ns/net)" = "$(stat -L -c %i /run/netns/$PREFIX$short)" ] && echo vm_netns=same || echo vm_netns=other
echo "vmm_links=$(nsenter -t "$vmm" -n ip -o link | wc -l)"
ls -A "/proc/$vmm/root/" > cell.txt; ls "/proc/$vmm/root/proc" > cell_proc.txt
[ -e "/proc/$vmm/root/etc/shadow" ] && echo cell_shadow=yes || echo cell_shadow=no
if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
    cg=/sys/fs/cgroup$(sed -n 's/^0:://p' "/proc/$vmm/cgroup")
    echo "cgroup=$cg mem_max=$(cat $cg/memory.max) pids_max=$(cat $cg/pids.max)" \
         "cpu_max=$(tr ' ' / < $cg/cpu.max) oom_group=$(cat $cg/memory.oom.group)"
else
    v1() { echo "$(grep -E " - cgroup .*[ ,]$1(,|$)" /proc/self/mountinfo | cut -d' ' -f5)$(grep -E "^[0-9]+:([^:]*,)?$1(,[^:]*)?:" "/proc/$vmm/cgroup" | cut -d: -f3)"; }
    cg=$(v1 memory)
    echo "cgroup=$cg mem_max=$(cat $cg/memory.limit_in_bytes) pids_max=$(cat $(v1 pids)/pids.max)" \
         "cpu_max=$(cat $(v1 cpu)/cpu.cfs_quota_us)/$(cat $(v1 cpu)/cpu.cfs_period_us) oom_group=1"
fi
echo "$cg" > cgroup.txt
grep 'jailed in' "$MM_STATE/machines/$short/worker.log" > jailed.txt
"""
# bash: wait (bounded) until `mm logs $1` shows $2.
WAIT_LOGS = """
wait_logs() {
    for _ in $(seq 90); do "$MM" logs "$1" 2>/dev/null | grep -q "$2" && return 0; sleep 2; done
    echo "timed out waiting for '$2' in the logs of $1"; return 1
}
"""
# HTTP GET on the guest host (busybox-static's wget crashes in the lab's chroot).
HGET = """hget() { python3 -c '
import sys, urllib.request
try:
    print(urllib.request.urlopen(sys.argv[1], timeout=20).read().decode().strip())
except Exception as e:
    print("error:", e)' "$1"; }
"""


@pytest.fixture(scope="module")
def mm(guest_host):
    shell = MMShell(guest_host, "jail")
    shell.port = random.randint(40000, 49999)
    yield shell
    shell.close()


def _status(text: str) -> dict[str, list[str]]:
    return {k: v.split() for k, _, v in (line.partition(":") for line in text.splitlines())}


def test_a_real_guests_vmm_is_jailed_as_configured(mm):
    r = mm.sh(f"""
        run -d --name jl -m 256m --cpus 1.5 --pids-limit 90 -p 127.0.0.1:{mm.port}:80 {IMAGE} sh -c '{WORKLOAD}' \\
            >id.txt 2>run.err; echo rc=$?
        "$MM" inspect jl --json >inspect.json
        {FACTS}
    """)
    v = values(r)
    assert v.get("rc") == "0", explain(r) + mm.out("run.err")
    assert v["vmm_count"] == "1", "the supervisor has exactly one child, the VMM: " + explain(r)
    status = _status(mm.out("vmm.status"))
    ident = str(JAIL_ID_BASE + int(v["sup"]))
    assert status["Uid"] == [ident] * 4 and status["Gid"] == [ident] * 4, (status["Uid"], status["Gid"])
    assert status["Groups"] == [], "no supplementary groups"
    assert status["NoNewPrivs"] == ["1"] and status["Seccomp"] == ["2"], status
    for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert status[cap] == ["0000000000000000"], (cap, status[cap])
    assert status["NSpid"][-1] == "1", "the VMM is pid 1 of its own PID namespace"
    threads = mm.out("threads.txt").split()
    # One pass over the VMM's threads: all of them in filter mode 2. (Its thread count read
    # separately may differ by one: device threads come and go, and inherit the filter.)
    assert len(threads) == 3 and threads[1:] == ["Seccomp:", "2"] and int(threads[0]) > 1, \
        f"every thread (vCPU, devices) is filtered: {mm.out('threads.txt')}"
    assert all(v[f"ns_{n}"] == "own" for n in ("mnt", "pid", "ipc", "uts", "net", "cgroup")), explain(r)
    assert v["vm_netns"] == "other" and v["vmm_links"] == "1", "the VMM's network namespace is new and empty (lo)"
    cell = set(mm.out("cell.txt").split())
    assert cell and not cell & {"etc", "dev", "home", "var", "sys", "boot"}, f"the cell holds: {sorted(cell)}"
    assert v["cell_shadow"] == "no"
    assert all(p.isdigit() or p in ("self", "thread-self") for p in mm.out("cell_proc.txt").split()), \
        "the cell's /proc shows processes only (subset=pid)"
    assert (v["mem_max"], v["pids_max"], v["cpu_max"]) == (str(256 * MiB + 256 * MiB), "90", "150000/100000"), \
        "the cgroup carries --memory + the VMM's 256 MiB overhead, --pids-limit and --cpus as a quota"
    assert v["oom_group"] == "1", "an OOM kill takes the whole VMM"
    jailed = mm.out("jailed.txt")
    assert f"uid/gid {ident}/{ident}, cpus 1.5, memory 512 MiB, pids 90" in jailed, jailed


def test_block_vsock_network_and_logs_work_in_the_jail(mm):
    r = mm.sh(WAIT_LOGS + HGET + f"""
        wait_logs jl jail-stdout
        "$MM" logs jl >logs.out 2>logs.err
        "$MM" exec jl sh -c 'cat /root/at-boot; head -c 8388608 /dev/urandom > /root/blob; md5sum /root/blob
            sync; echo 3 > /proc/sys/vm/drop_caches; md5sum /root/blob /bin/busybox' >exec.out 2>exec.err
        echo exec_rc=$?
        "$MM" cp jl:/root/blob blob.out; echo cp_rc=$?
        echo "host_blob=$(md5sum < blob.out | cut -d' ' -f1) host_busybox=$(md5sum < /bin/busybox | cut -d' ' -f1)"
        echo "page=$(hget http://127.0.0.1:{mm.port}/ | tr ' ' _)"
        ip=$(jq -r .ip inspect.json)
        for _ in $(seq 30); do busybox ping -c1 -W2 "$ip" >/dev/null 2>&1 && {{ echo ping=ok; break; }}; done
    """)
    v = values(r)
    assert mm.out("logs.out").splitlines()[:1] == ["jail-stdout"], explain(r) + mm.out("logs.err")
    assert mm.out("logs.err").splitlines()[:1] == ["jail-stderr"], "the workload's stderr over vsock, kept apart"
    assert v.get("exec_rc") == "0", explain(r) + mm.out("exec.err")
    lines = mm.out("exec.out").split()
    assert lines[0] == "overlay-at-boot", mm.out("exec.out")
    written, reread, busybox = lines[1], lines[3], lines[5]
    assert written == reread == v["host_blob"], "8 MiB through the overlay disk and back (cache dropped), and out by cp"
    assert busybox == v["host_busybox"], "the root disk reads back the image's busybox"
    assert v["cp_rc"] == "0"
    assert v["page"] == PAGE, f"the published port 127.0.0.1:{mm.port} answers through the jailed VMM: {explain(r)}"
    assert v.get("ping") == "ok", "the guest answers pings on its address"


def test_a_graceful_stop_is_143_and_leaves_nothing(mm):
    r = mm.sh("""
        vmm=$(cat vmm.pid); cg=$(cat cgroup.txt); id=$(jq -r .id inspect.json)
        "$MM" stop jl >stop.out 2>stop.err; echo stop_rc=$?
        "$MM" inspect jl --json >stopped.json
        kill -0 "$vmm" 2>/dev/null && echo vmm_left=yes || echo vmm_left=no
        [ -d "$cg" ] && echo cgroup_left=yes || echo cgroup_left=no
        echo "sockets_left=$(find "$MM_STATE/machines/${id:0:12}" -type s | wc -l)"
    """)
    v = values(r)
    assert v.get("stop_rc") == "0", explain(r) + mm.out("stop.err")
    stopped = mm.json("stopped.json")
    assert (stopped["state"], stopped["exit_code"]) == ("exited", 143), \
        "the workload ends on SIGTERM, as Docker reports a stopped container"
    assert (v["vmm_left"], v["cgroup_left"], v["sockets_left"]) == ("no", "no", "0"), explain(r)


def test_a_guest_touching_more_than_its_cgroup_allows_gets_the_vmm_oom_killed(mm):
    fill = ("echo filling; mount -t tmpfs -o size=450m fill /mnt && "
            "dd if=/dev/zero of=/mnt/fill bs=1M count=400 2>/dev/null; echo survived")
    r = mm.sh(f"""
        {MEMORY_ENV}=256m run --name oom -m 512m --network none {IMAGE} sh -c '{fill}' >oom.out 2>oom.err
        echo rc=$?
        "$MM" inspect oom --json >oom.json; "$MM" ps -a >oom_ps.txt
        "$MM" rm oom >/dev/null; echo rm_rc=$?
    """)
    v = values(r)
    assert v.get("rc") == "137", explain(r) + mm.out("oom.err")
    assert mm.out("oom.out").splitlines() == ["filling"], "the guest ran, and never finished filling"
    info = mm.json("oom.json")
    assert (info["state"], info["exit_code"], info["exit_reason"]) == ("exited", 137, "oom"), info
    assert info["config"]["worker"]["jail"]["memory"] == 256 * MiB
    assert "OOM killer" in info["error"] and "memory limit of 256 MiB" in info["error"], info["error"]
    assert f"mm: machine oom ended by oom: {info['error']}" in mm.out("oom.err")
    assert "Exited (137)" in mm.out("oom_ps.txt")
    assert v["rm_rc"] == "0"

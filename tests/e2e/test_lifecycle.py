"""Every lifecycle command on a real, detached guest, as a user types them: run -d, ps
(-a, -q, --format json), inspect --json, logs (-f, --tail, --console), pause/unpause,
stats, console (a real terminal, Ctrl-] detaches), stop, start, restart, kill (-s),
wait, rm (-f), system prune; a duplicate name and exec on a stopped machine refused;
`kill -9` of a worker leaving the store truthful; and nothing (namespace, veth, lease,
socket, disk, directory) left once a machine is removed.

One machine, `lc`, serves the tests in file order (each boot costs tens of seconds in the
lab). Its workload counts its boots in a file on its writable layer, so a restart shows
the disk survives, and writes stdout, stderr and console lines every second. It is on
the default network, so it has an address that the lab host pings.
"""
from __future__ import annotations

import re

import pytest

from tests.e2e.conftest import GUEST_TRIPLE_FAULT
from tests.e2e.mm_shell import IMAGE, MMShell, explain, values

WORKLOAD = ('echo boot >> /root/boots; echo "started boots=$(wc -l < /root/boots)"; i=0; '
            'while :; do echo "tick $i"; echo "tock $i" >&2; echo "<1>mm-console-tick $i" > /dev/kmsg; '
            'i=$((i+1)); sleep 1; done')
INSPECT_KEYS = {"name", "id", "state", "image", "ip", "pid", "exit_code", "created"}

# bash: wait (bounded) until `mm logs lc` shows $1.
WAIT_LOGS = """
wait_logs() {
    for _ in $(seq 90); do "$MM" logs "$1" 2>/dev/null | grep -q "$2" && return 0; sleep 2; done
    echo "timed out waiting for '$2' in the logs of $1"; return 1
}
gone() {  # wait (bounded) until process $1 has ended: no such process, or a zombie nobody reaped yet
    for _ in $(seq 300); do grep -qs '^State:[[:space:]]*[^Z]' "/proc/$1/status" || return 0; sleep 0.2; done
    echo "process $1 did not end"; return 1
}
leftovers() {  # what machine $1 (short id) could leave behind, as key=count words
    echo "dir_$2=$(ls -d "$MM_STATE/machines/$1" 2>/dev/null | wc -l)" \\
         "netns_$2=$(ip netns list | grep -c "^$PREFIX$1")" \\
         "veth_$2=$(ip -o link show | grep -c "mmv$1")" \\
         "lease_$2=$(sqlite3 "$MM_STATE/mm.db" "SELECT count(*) FROM leases WHERE vm_id LIKE '$1%'" 2>/dev/null || echo 0)" \\
         "procs_$2=$(pgrep -fc "machines/$1/spec.json")"
}
"""


@pytest.fixture(scope="module")
def mm(guest_host):
    shell = MMShell(guest_host, "life")
    yield shell
    shell.close()


def sh(mm, script: str):
    return mm.sh(WAIT_LOGS + script)


def test_run_detached_then_ps_inspect_and_ping(mm):
    r = sh(mm, f"""
        run -d --name lc -m 128m {IMAGE} sh -c '{WORKLOAD}' >id.txt 2>run.err; echo rc=$?
        "$MM" ps >ps.txt; "$MM" ps -q >psq.txt
        "$MM" ps --format json >ps.json; "$MM" ps -a --format json >psa.json
        "$MM" inspect lc --json >inspect.json
        ip=$(jq -r .ip inspect.json); pid=$(jq -r .pid inspect.json)
        kill -0 "$pid" && echo worker_alive=yes
        for _ in $(seq 60); do busybox ping -c1 -W2 "$ip" >/dev/null 2>&1 && {{ echo ping=ok; break; }}; done
    """)
    v = values(r)
    assert v.get("rc") == "0", explain(r) + mm.out("run.err")
    machine_id = mm.out("id.txt").strip()
    assert re.fullmatch(r"[0-9a-f]{64}", machine_id), mm.out("id.txt")
    info = mm.json("inspect.json")
    assert INSPECT_KEYS <= info.keys()
    assert (info["name"], info["id"], info["state"], info["exit_code"]) == ("lc", machine_id, "running", None)
    assert "mm/default" in info["image"] and isinstance(info["created"], float)
    assert info["ip"].startswith(mm.subnet.split(".0.0/")[0] + "."), (info["ip"], mm.subnet)
    assert v.get("worker_alive") == "yes", f"pid {info['pid']} is not a live process"
    assert v.get("ping") == "ok", f"the guest at {info['ip']} did not answer pings: {explain(r)}"
    table = mm.out("ps.txt").splitlines()
    assert table[0].split()[:3] == ["MACHINE", "ID", "IMAGE"] and len(table) == 2
    assert " lc" in table[1] and "Up " in table[1] and info["ip"] in table[1]
    assert mm.out("psq.txt").split() == [machine_id[:12]]
    assert [m["name"] for m in mm.json("ps.json")] == ["lc"] == [m["name"] for m in mm.json("psa.json")]
    assert mm.json("ps.json")[0]["state"] == "running"


def test_logs_keep_streams_apart_and_tail(mm):
    r = sh(mm, """
        wait_logs lc 'tick 3'
        "$MM" logs lc >logs.out 2>logs.err; "$MM" logs --tail 3 lc >tail3.txt 2>&1; echo tail_rc=$?
        "$MM" logs -n 0 lc >tail0.txt 2>&1; "$MM" logs --console lc >console.txt
        "$MM" logs --tail many lc 2>badtail.err; echo badtail=$?
    """)
    v = values(r)
    out, err = mm.out("logs.out").splitlines(), mm.out("logs.err").splitlines()
    assert out[:3] == ["started boots=1", "tick 0", "tick 1"], explain(r)
    assert all(line.startswith(("tick", "started")) for line in out)
    assert err[:2] == ["tock 0", "tock 1"] and all(line.startswith("tock") for line in err)
    assert v["tail_rc"] == "0" and len(mm.out("tail3.txt").splitlines()) == 3
    assert mm.out("tail0.txt") == ""
    assert "mm-console-tick 0" in mm.out("console.txt"), "the guest's console is kept apart from the workload's output"
    assert v["badtail"] != "0" and "--tail" in mm.out("badtail.err")


def test_pause_unpause_stats_and_console(mm):
    r = sh(mm, """
        "$MM" pause lc >pause.txt; echo pause=$?
        "$MM" inspect lc --json >paused.json; "$MM" ps >ps_paused.txt
        sleep 2; a=$("$MM" logs lc 2>/dev/null | wc -l); sleep 4; b=$("$MM" logs lc 2>/dev/null | wc -l)
        echo "paused_lines_before=$a paused_lines_after=$b"
        "$MM" pause lc 2>pause_again.err; echo pause_again=$?
        "$MM" unpause lc >unpause.txt; echo unpause=$?
        "$MM" inspect lc --json >unpaused.json
        "$MM" stats --no-stream lc >stats.txt; echo stats=$?
        "$MM" stats --json lc >stats.json
        PYTHONPATH=/work/main "$PY" -m tests.e2e.console_pty "$MM" lc 'mm-console-tick' >console.json
        "$MM" inspect lc --json >after_console.json
    """)
    v = values(r)
    assert (v.get("pause"), v.get("unpause"), v.get("stats")) == ("0", "0", "0"), explain(r)
    assert mm.out("pause.txt").strip() == "lc" == mm.out("unpause.txt").strip()
    assert mm.json("paused.json")["state"] == "paused" and "(Paused)" in mm.out("ps_paused.txt")
    assert v["paused_lines_before"] == v["paused_lines_after"], "a paused guest wrote output"
    assert v["pause_again"] != "0" and "paused" in mm.out("pause_again.err")
    assert mm.json("unpaused.json")["state"] == "running"
    stats = mm.json("stats.json")["lc"]
    assert stats["state"] == "running" and stats["worker_rss_kib"] > 0 and stats["vm"]["vcpus"] == 1
    assert "lc" in mm.out("stats.txt") and "WORKER RSS" in mm.out("stats.txt") and "128MiB" in mm.out("stats.txt")
    console = mm.json("console.json")
    assert console["attached"] and console["saw_needle"], console
    assert console["raw_while_attached"], "mm console puts the terminal in raw mode"
    assert console["status"] == 0 and console["restored"], console
    assert mm.json("after_console.json")["state"] == "running", "detaching the console leaves the VM running"


def test_stop_start_restart_keep_the_disk(mm):
    r = sh(mm, f"""
        "$MM" logs -f lc >follow.out 2>follow.err & follower=$!
        for _ in $(seq 60); do grep -q tick follow.out && break; sleep 1; done
        "$MM" stop lc >stop.txt; echo stop=$?
        "$MM" inspect lc --json >stopped.json
        wait $follower; echo follow=$?
        "$MM" ps -q >ps_stopped.txt; "$MM" ps -a >psa_stopped.txt
        "$MM" exec lc true 2>exec_stopped.err; echo exec_stopped=$?
        run -d --name lc {IMAGE} true 2>dup.err; echo dup=$?; echo "machines=$("$MM" ps -aq | wc -l)"
        "$MM" start lc >start.txt; echo start=$?
        wait_logs lc 'boots=2' && echo second_boot=yes
        "$MM" restart lc >restart.txt; echo restart=$?
        wait_logs lc 'boots=3' && echo third_boot=yes
        "$MM" inspect lc --json >restarted.json
    """)
    v = values(r)
    assert v.get("stop") == "0" and mm.out("stop.txt").strip() == "lc", explain(r)
    stopped = mm.json("stopped.json")
    assert stopped["state"] == "exited" and stopped["pid"] is None and isinstance(stopped["exit_code"], int)
    assert v["follow"] == "0" and "tick" in mm.out("follow.out"), "logs -f ends by itself when the machine stops"
    assert "tock" in mm.out("follow.err") and "tock" not in mm.out("follow.out")
    assert mm.out("ps_stopped.txt").strip() == "" and "Exited (" in mm.out("psa_stopped.txt")
    assert v["exec_stopped"] != "0" and "exited" in mm.out("exec_stopped.err"), mm.out("exec_stopped.err")
    assert v["dup"] != "0" and "already used" in mm.out("dup.err") and v["machines"] == "1", mm.out("dup.err")
    assert v["start"] == "0" and v.get("second_boot") == "yes", explain(r)
    assert v["restart"] == "0" and v.get("third_boot") == "yes", explain(r)
    restarted = mm.json("restarted.json")
    assert restarted["state"] == "running" and restarted["generation"] == 3


def test_kill_wait_rm_and_nothing_left(mm):
    r = sh(mm, """
        short=$(jq -r .short_id restarted.json)
        "$MM" kill -s TERM lc; echo term=$?
        "$MM" wait lc >wait_term.txt; echo wait_term=$?
        "$MM" inspect lc --json >termed.json
        "$MM" kill -s BOGUS lc 2>badsig.err; echo badsig=$?
        "$MM" start lc >/dev/null; echo start=$?
        "$MM" rm lc 2>rm_running.err; echo rm_running=$? "still=$("$MM" ps -q | wc -l)"
        "$MM" kill -s NOPE lc 2>badsig_running.err; echo badsig_running=$?
        "$MM" wait lc >wait_kill.txt & waiter=$!
        sleep 3; "$MM" kill lc; echo kill=$?
        wait $waiter; echo waiter=$?
        "$MM" inspect lc --json >killed.json
        "$MM" rm lc >rm.txt; echo rm=$?
        "$MM" inspect lc 2>inspect_gone.err; echo inspect_gone=$?
        leftovers "$short" lc
    """)
    v = values(r)
    assert (v.get("term"), v.get("wait_term")) == ("0", "0"), explain(r)
    assert mm.json("termed.json")["state"] == "exited", "kill -s TERM asks the guest to shut down"
    assert v["badsig"] != "0", "a bad signal is refused"
    assert v["start"] == "0" and v["rm_running"] != "0" and v["still"] == "1", explain(r)
    assert "running" in mm.out("rm_running.err") and "-f" in mm.out("rm_running.err")
    assert v["badsig_running"] != "0" and "signal" in mm.out("badsig_running.err")
    assert v["kill"] == "0" and v["waiter"] == "0" and mm.out("wait_kill.txt").strip() == "137", explain(r)
    killed = mm.json("killed.json")
    assert (killed["state"], killed["exit_code"], killed["exit_reason"]) == ("exited", 137, "killed")
    assert v["rm"] == "0" and mm.out("rm.txt").strip() == "lc"
    assert v["inspect_gone"] != "0" and "no such machine" in mm.out("inspect_gone.err")
    left = {k: v[k] for k in v if k.endswith("_lc")}
    assert left == {"dir_lc": "0", "netns_lc": "0", "veth_lc": "0", "lease_lc": "0", "procs_lc": "0"}, left


def test_kill_9_of_a_worker_then_ps_and_prune_tell_the_truth(mm):
    r = sh(mm, f"""
        run -d --name k9 -m 64m {IMAGE} sleep 2147483647 >/dev/null 2>run.err; echo rc=$?
        "$MM" inspect k9 --json >k9.json
        pid=$(jq -r .pid k9.json); short=$(jq -r .short_id k9.json)
        kill -9 "$pid"; gone "$pid"
        for _ in $(seq 50); do [ "$(pgrep -fc "machines/$short/spec.json")" = 0 ] && break; sleep 0.2; done
        "$MM" ps -q >ps_dead.txt; "$MM" ps -a >psa_dead.txt; "$MM" inspect k9 --json >dead.json
        leftovers "$short" before
        "$MM" system prune -f >prune.txt; echo prune=$?
        leftovers "$short" after
        "$MM" system prune -f >prune_again.txt
    """)
    v = values(r)
    assert v.get("rc") == "0", explain(r) + mm.out("run.err")
    assert v["procs_before"] == "0", "the VMM outlived its killed supervisor: the VM would run on unseen"
    assert mm.out("ps_dead.txt").strip() == "", "ps lists only running machines"
    dead = mm.json("dead.json")
    assert (dead["state"], dead["pid"]) == ("dead", None) and "worker" in dead["error"], dead
    assert "Dead" in mm.out("psa_dead.txt")
    assert v["prune"] == "0" and "removed k9" in mm.out("prune.txt"), mm.out("prune.txt")
    after = {k: v[k] for k in v if k.endswith("_after")}
    assert after == {"dir_after": "0", "netns_after": "0", "veth_after": "0", "lease_after": "0", "procs_after": "0"}
    assert "0 machine(s) removed" in mm.out("prune_again.txt")


# Ten concurrent boots on the lab's two emulated CPUs take 5-8 minutes, and a lab that
# dies under the load is booted afresh and the script run once more (conftest.py); so is
# a script under which a guest triple-faulted in the lab (two of the ten did in one CI run
# of 2026-12-04, early in their boot), the lab's fault of docs/lab.md, not retried on a
# hardware-KVM host.
@pytest.mark.timeout(1500)
def test_ten_machines_at_once(mm):
    r = sh(mm, f"""
        names=$(seq -f c%g 10); rm -f unreachable.txt
        for n in $names; do (run -d --name $n -m 64m {IMAGE} sleep 2147483647 >$n.id 2>$n.err; echo $? >$n.rc) & done
        wait
        for n in $names; do echo "rc_$n=$(cat $n.rc)"; done
        "$MM" ps --format json >ten.json
        for ip in $(jq -r '.[].ip' ten.json); do
            ok=no; for _ in $(seq 60); do busybox ping -c1 -W2 "$ip" >/dev/null 2>&1 && {{ ok=yes; break; }}; done
            echo "ping_$(echo $ip | tr . _)=$ok"
            if [ $ok = no ]; then  # say what became of it
                n=$(jq -r --arg ip "$ip" '.[] | select(.ip == $ip) | .name' ten.json)
                {{ echo "== $n ($ip) did not answer"; "$MM" inspect "$n" --json | jq -c '{{state, exit_code, error}}'
                   "$MM" logs --console -n 15 "$n"; }} >>unreachable.txt 2>&1
                # The lab's known guest fault (docs/lab.md): GuestHost runs the script once more.
                "$MM" inspect "$n" --json | jq -r .error | grep -q "triple fault" && echo "mm: machine $n {GUEST_TRIPLE_FAULT}" >&2
            fi
        done
        "$MM" rm -f $names >rm.txt; echo rm=$?
        echo "machines=$("$MM" ps -aq | wc -l) dirs=$(ls -A "$MM_STATE/machines" | wc -l)" \\
             "netns=$(ip netns list | grep -c "^$PREFIX")" \\
             "leases=$(sqlite3 "$MM_STATE/mm.db" 'SELECT count(*) FROM leases')" \\
             "procs=$(pgrep -fc "$MM_STATE/machines/")"
    """)
    v = values(r)
    rcs = {k: v.get(k) for k in (f"rc_c{i}" for i in range(1, 11))}
    assert set(rcs.values()) == {"0"}, f"{rcs}\n" + "".join(mm.out(f"c{i}.err") for i in range(1, 11))
    ten = mm.json("ten.json")
    assert sorted(m["name"] for m in ten) == sorted(f"c{i}" for i in range(1, 11))
    assert {m["state"] for m in ten} == {"running"} and len({m["ip"] for m in ten}) == 10
    pings = {k: val for k, val in v.items() if k.startswith("ping_")}
    assert len(pings) == 10 and set(pings.values()) == {"yes"}, f"{pings}\n{mm.out('unreachable.txt')}"
    assert v["rm"] == "0" and sorted(mm.out("rm.txt").split()) == sorted(f"c{i}" for i in range(1, 11))
    assert (v["machines"], v["dirs"], v["netns"], v["leases"], v["procs"]) == ("0", "0", "0", "0", "0"), explain(r)

"""vmm.worker.affinity: the one-CPU default the lab asks for, and confining a thread tree."""
from __future__ import annotations

import os
import threading

import pytest

from vmm.worker import affinity


def test_no_default_cpuset_unless_asked():
    assert affinity.default_cpuset("ab12cd34", env={}) is None
    assert affinity.default_cpuset("ab12cd34", env={affinity.ENV: "other"}) is None


def test_single_picks_one_of_our_cpus_by_machine_id():
    cpus = sorted(os.sched_getaffinity(0))
    env = {affinity.ENV: affinity.SINGLE}
    picks = {tuple(affinity.default_cpuset(f"{i:08x}", env=env)) for i in range(16)}
    assert all(len(p) == 1 and p[0] in cpus for p in picks)
    assert len(picks) == min(len(cpus), 16)  # machines spread over every CPU
    assert affinity.default_cpuset("0000000a", env=env) == affinity.default_cpuset("0000000a", env=env)


def _in_child(fn) -> int:
    """Run fn in a forked child (affinity is per thread and inherited): its exit status."""
    pid = os.fork()
    if pid == 0:
        try:
            os._exit(fn())
        except BaseException:
            os._exit(99)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def test_apply_confines_threads_started_afterwards():
    cpu = max(os.sched_getaffinity(0))

    def child() -> int:
        affinity.apply([cpu])
        seen = []
        t = threading.Thread(target=lambda: seen.append(os.sched_getaffinity(0)))
        t.start()
        t.join()
        return 0 if seen == [{cpu}] and os.sched_getaffinity(0) == {cpu} else 1

    assert _in_child(child) == 0


def test_apply_of_cpus_the_host_lacks_is_a_clear_error():
    with pytest.raises(affinity.AffinityError, match="cannot run the VM on CPUs"):
        affinity.apply([8000])
    affinity.apply(None)  # no cpuset: nothing changes

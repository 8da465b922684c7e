"""The session's real-host cleanup check (`leftovers` in conftest) catches what it should.

The rulesets compared here come from `nft list ruleset` in the test's private "host"
namespace, so the check is exercised on real nft output without touching the real host.
"""
from __future__ import annotations

import subprocess

from tests.network.conftest import TAG, leftovers


def _state(netns: set[str], links: set[str]) -> dict:
    ruleset = subprocess.run(["nft", "--stateless", "list", "ruleset"], capture_output=True, text=True,
                             check=True).stdout
    return {"netns": netns, "links": links, "ruleset": ruleset}


def test_a_changed_ruleset_is_reported_with_a_diff(host):
    before = _state(set(), {"lo"})
    subprocess.run(["nft", "add table inet other; add chain inet other c { type filter hook input priority 0; }"],
                   check=True)
    problems = leftovers(before, _state(set(), {"lo"}))
    assert len(problems) == 1 and "nft ruleset changed" in problems[0]
    assert "+table inet other {" in problems[0] and "+\tchain c {" in problems[0]


def test_same_state_and_foreign_names_pass(host):
    before = _state({"someone-else"}, {"lo", "eth0"})
    after = _state({"someone-else", "other-ns"}, {"lo", "eth0", "docker0"})
    assert leftovers(before, after) == []


def test_our_namespaces_and_links_are_reported(host):
    before = _state(set(), {"lo"})
    after = _state({f"{TAG}-abc"}, {"lo", f"{TAG}0", "mmvabc"})
    problems = leftovers(before, after)
    assert problems == [f"namespaces left behind: {TAG}-abc", f"links left behind: {TAG}0, mmvabc"]

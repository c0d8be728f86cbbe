# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""plugin_utils.rollout (waves, membership, limits, verdicts, the slot decision) and
plugin_utils.rollout_store (atomic files, the lock)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import typing as t
from pathlib import Path

import pytest

from ansible_collections.osfleet.hup.plugins.plugin_utils import rollout as ro
from ansible_collections.osfleet.hup.plugins.plugin_utils import rollout_approval as ro_approval
from ansible_collections.osfleet.hup.plugins.plugin_utils import rollout_store as ro_store
from ansible_collections.osfleet.hup.plugins.plugin_utils.report import iso
from ansible_collections.osfleet.hup.plugins.plugin_utils.rollout_store import RolloutDir, process_start

FLEET = [f"dev{i:02d}" for i in range(1, 41)]
WAVES = [
    {"name": "canary", "hosts": "ring_canary", "max_failures": 0, "approval": True, "bake": "2h"},
    {"name": "early", "percent": 10, "max_failures": "5%", "min_devices": 5, "bake": "30m"},
    {"name": "broad", "percent": 100, "max_failures": "2%", "max_concurrent": 50},
]


def plan_of(waves: list[dict[str, t.Any]], fleet: list[str], patterns: dict[str, list[str]]) -> dict[str, t.Any]:
    specs = ro.parse_waves(waves)
    members, unplanned = ro.assign(specs, fleet, patterns)
    return {"id": "r1", "target_version": "2.113.0", "digest": ro.spec_digest("2.113.0", waves, fleet), "fleet": fleet,
            "waves": [ro.wave_dict(w, members[w.name], i + 1) for i, w in enumerate(specs)], "unplanned": unplanned}


# -- parsing
def test_the_issue_example_parses_with_its_keys() -> None:
    canary, early, broad = ro.parse_waves(WAVES)
    assert canary.hosts == "ring_canary" and canary.approval and canary.bake == 7200 and canary.max_failures == ro.Limit(0)
    assert early.percent == 10 and early.max_failures == ro.Limit(5, percent=True) and early.min_devices == 5 and early.bake == 1800
    assert broad.max_concurrent == ro.Limit(50) and broad.max_failures.text() == "2%"


@pytest.mark.parametrize("value, seconds", [(90, 90), ("45s", 45), ("30m", 1800), ("2h", 7200), ("1d", 86400),
                                            ("1h30m", 5400), ("15", 15), (0, 0)])
def test_durations(value: t.Any, seconds: int) -> None:
    assert ro.parse_duration(value, "bake") == seconds


@pytest.mark.parametrize("waves, fragment", [
    ([], "a non-empty list"),
    ("canary", "a non-empty list"),
    ([{"name": "a", "hosts": "x"}] * 2, "hup_waves[1] (a): name: the wave a is declared twice"),
    ([{"name": "a"}], "hup_waves[0] (a): give either hosts"),
    ([{"name": "a", "hosts": "x", "percent": 5}], "hup_waves[0] (a): give either hosts"),
    ([{"name": "a", "percent": 0}], "hup_waves[0] (a): percent: a number above 0"),
    ([{"name": "a", "percent": "lots"}], "hup_waves[0] (a): percent: a number"),
    ([{"name": "a", "hosts": "x", "max_failures": "120%"}], "hup_waves[0] (a): max_failures: a count or a percentage"),
    ([{"name": "a", "hosts": "x", "max_failures": -1}], "hup_waves[0] (a): max_failures: at least 0"),
    ([{"name": "a", "hosts": "x", "max_failures": True}], "not a boolean"),
    ([{"name": "a", "hosts": "x", "bake": "soon"}], "hup_waves[0] (a): bake: not a duration"),
    ([{"name": "a", "hosts": "x", "approval": "yes"}], "hup_waves[0] (a): approval: true or false"),
    ([{"name": "a", "hosts": "x", "max_concurrent": 0}], "hup_waves[0] (a): max_concurrent: at least 1"),
    ([{"name": "a", "hosts": "x", "min_devices": 0}], "hup_waves[0] (a): min_devices"),
    ([{"name": "a", "hosts": "x", "maxfailures": 1}], "hup_waves[0] (a): unknown key(s) maxfailures"),
    ([{"name": "a b", "hosts": "x"}], "hup_waves[0] (a b): name:"),
    (["canary"], "hup_waves[0]: a mapping"),
    ([{"name": f"w{i}", "hosts": "x"} for i in range(9)], "at most 8 waves"),
])
def test_bad_waves_name_the_wave_and_the_key(waves: t.Any, fragment: str) -> None:
    with pytest.raises(ro.RolloutError) as err:
        ro.parse_waves(waves)
    assert fragment in str(err.value)


# -- membership
def test_percent_waves_take_their_share_of_the_rest_by_a_stable_hash() -> None:
    plan = plan_of(WAVES, FLEET, {"canary": ["dev07", "not-in-fleet"]})
    canary, early, broad = plan["waves"]
    assert canary["hosts"] == ["dev07"]
    assert len(early["hosts"]) == 4  # 10% of the 39 left, rounded up
    assert sorted(canary["hosts"] + early["hosts"] + broad["hosts"]) == FLEET and plan["unplanned"] == []
    order = sorted((h for h in FLEET if h != "dev07"), key=ro.stable_key)
    assert early["hosts"] == sorted(order[:4])


def test_membership_does_not_move_when_devices_are_added_or_the_order_changes() -> None:
    first = plan_of(WAVES, FLEET, {"canary": ["dev07"]})
    shuffled = plan_of(WAVES, list(reversed(FLEET)), {"canary": ["dev07"]})
    assert first["waves"] == shuffled["waves"]
    # a device added later goes where its hash puts it; no other device leaves the canary or the early wave
    grown = plan_of([{**WAVES[0]}, {"name": "early", "percent": 50}, WAVES[2]], FLEET + ["dev99"], {"canary": ["dev07"]})
    before = plan_of([{**WAVES[0]}, {"name": "early", "percent": 50}, WAVES[2]], FLEET, {"canary": ["dev07"]})
    moved = set(before["waves"][1]["hosts"]) - set(grown["waves"][1]["hosts"])
    assert len(moved) <= 1


def test_a_device_in_two_pattern_waves_is_in_the_first_and_devices_no_wave_takes_are_unplanned() -> None:
    waves = [{"name": "a", "hosts": "p"}, {"name": "b", "hosts": "q"}, {"name": "c", "percent": 50}]
    plan = plan_of(waves, ["x1", "x2", "x3", "x4", "x5"], {"a": ["x1", "x2"], "b": ["x2", "x3"]})
    a, b, c = plan["waves"]
    assert a["hosts"] == ["x1", "x2"] and b["hosts"] == ["x3"] and len(c["hosts"]) == 1
    assert sorted(plan["unplanned"] + c["hosts"]) == ["x4", "x5"]


# -- limits
@pytest.mark.parametrize("limit, devices, text", [
    (0, 1, "halts at the 1st failure"), (1, 10, "halts at the 2nd failure"), ("5%", 40, "halts at the 3rd failure (5% of 40)"),
    ("2%", 49, "halts at the 1st failure (2% of 49)"), ("2%", 50, "halts at the 2nd failure (2% of 50)"),
    (3, 3, "never halts (3 of 3)"), ("10%", 111, "halts at the 12th failure (10% of 111)"),
])
def test_limits_as_counts(limit: t.Any, devices: int, text: str) -> None:
    assert ro.limit_text(ro.parse_limit(limit, "max_failures"), devices) == text


def records(**status: str) -> dict[str, dict[str, t.Any]]:
    return {host: {"status": s} for host, s in status.items()}


def wave(hosts: list[str], max_failures: t.Any = 0, min_devices: int = 1, max_deferred: t.Any = 0) -> dict[str, t.Any]:
    spec = ro.parse_waves([{"name": "w", "hosts": "p", "max_failures": max_failures, "min_devices": min_devices,
                            "max_deferred": max_deferred}])[0]
    return ro.wave_dict(spec, hosts, 1)


def test_judge_halts_past_the_limit_and_names_the_failed_devices() -> None:
    w = wave(["a", "b", "c", "d"], max_failures=1)
    assert ro.judge(w, records(a="failed", b="committed", c="committed", d="committed")).status == "passed"
    verdict = ro.judge(w, records(a="failed", b="failed", c="committed"))
    assert verdict.status == "halted" and "2 failed (a, b) > limit 1 (halts at the 2nd failure)" in verdict.reason
    assert ro.judge(w, records(a="failed", b="failed", c="committed"), acknowledged=1).status == "running"


def test_a_percentage_is_judged_only_after_min_devices_a_count_always() -> None:
    w = wave([f"h{i}" for i in range(10)], max_failures="10%", min_devices=5)
    assert ro.judge(w, records(h0="failed", h1="failed")).status == "running"  # 2 done < 5
    assert ro.judge(w, records(h0="failed", h1="failed", h2="committed", h3="committed", h4="current")).status == "halted"
    counted = wave([f"h{i}" for i in range(10)], max_failures=1, min_devices=5)
    assert ro.judge(counted, records(h0="failed", h1="failed")).status == "halted"


def test_deferred_devices_make_the_wave_inconclusive_never_passed() -> None:
    w = wave(["a", "b"])
    verdict = ro.judge(w, records(a="committed", b="deferred"))
    assert verdict.status == "inconclusive" and "1 device(s) deferred (b: unreachable before any change) > limit 0" in verdict.reason
    assert ro.judge(wave(["a", "b"], max_deferred=1), records(a="committed", b="deferred")).status == "passed"
    assert ro.judge(w, records(a="committed", b="in_progress")).status == "running"


def test_a_wave_decision_leaves_the_counts_to_the_report() -> None:
    w = wave(["a", "b", "c"], max_failures=1)
    passed = ro.judge(w, records(a="committed", b="committed", c="failed"))
    assert ro.wave_decision(w, {"status": "passed", "reason": passed.reason}) == "passed (halts at the 2nd failure)"
    assert ro.wave_decision(w, {"status": "baked", "reason": passed.reason}) == "passed, re-checked after its bake (halts at the 2nd failure)"
    assert ro.wave_decision(w, {"status": "baking", "bake_until": 60.0}) == "passed (halts at the 2nd failure); bakes until 1970-01-01T00:01:00.000Z"
    halted = ro.judge(w, records(a="failed", b="failed"))
    decision = ro.wave_decision(w, {"status": "halted", "reason": halted.reason})
    assert decision.startswith("2 failed (a, b) > limit 1 (halts at the 2nd failure): the rollout halted"), decision
    assert ro.wave_decision(w, {}) == "not started" and ro.wave_decision(w, {"status": "running"}) == "running"


def test_a_wave_the_rollout_waits_to_approve_says_so_not_that_it_did_not_start() -> None:
    w = {**wave(["a"]), "name": "main"}
    waiting = "wave main waits for approval: run with -e hup_rollout_approve=main"
    assert ro.wave_decision(w, {}, waiting) == "waits for approval: run with -e hup_rollout_approve=main"
    assert ro.wave_decision(w, {"status": "pending"}, waiting) == "waits for approval: run with -e hup_rollout_approve=main"
    # another wave's wait, or a bake: this one has not started
    assert ro.wave_decision({**w, "name": "rest"}, {}, waiting) == "not started"
    assert ro.wave_decision(w, {}, "wave canary passed (limit 1); it bakes until 2026-12-07T12:00:00.000Z: run again then") == "not started"


def test_the_plan_names_the_method_of_every_device_also_of_one_that_would_fail() -> None:
    """A mixed fleet: the x86 devices take the standard update, a jetson needs the advanced one
    (takeover), refused without hup_allow_data_loss; the plan names the method and rule of each."""
    from ansible_collections.osfleet.hup.plugins.plugin_utils.rollout_report import plan_summary

    plan = plan_of([{"name": "all", "percent": 100, "max_failures": 1}], ["x86-1", "xavier-1"], {})
    refused = ("preflight failed: the update needs the advanced method (takeover) [rule: partition-layout]: "
               "set hup_allow_data_loss to allow it")
    planned = {"x86-1": {"phase": "needed", "method": "balenahup", "rule": "standard", "source": "delta", "bytes": 100},
               "xavier-1": {"phase": "needed", "method": "takeover", "rule": "partition-layout", "error": refused}}
    lines = plan_summary(plan, {}, {}, planned)["lines"]
    assert "  x86-1: method balenahup [rule: standard], source delta, 100 bytes to download" in lines, lines
    assert f"  xavier-1: would fail (method takeover [rule: partition-layout]): {refused}" in lines, lines
    assert lines[-2] == "plan: 2 device(s) in 1 wave(s), 1 to update (100 bytes to download), 1 would fail", lines
    unknown = plan_summary(plan, {}, {}, {"xavier-1": {"phase": "?", "method": "?", "rule": "", "error": "unreachable"}})["lines"]
    assert "  xavier-1: would fail: unreachable" in unknown, unknown


# -- the slot decision
def test_slots_update_gate_and_skip() -> None:
    plan = plan_of(WAVES, FLEET, {"canary": ["dev07"]})
    state: dict[str, t.Any] = {"status": "active", "waves": {}}
    gate = ro.decide_slot(plan, state, {}, 0, "run", 1000.0, {})
    assert gate.mode == "stop" and gate.gate == "approval" and "-e hup_rollout_approve=canary" in gate.reason
    approvals = {"canary": {"digest": plan["digest"], "by": "op"}}
    go = ro.decide_slot(plan, state, {}, 0, "run", 1000.0, approvals)
    assert go.mode == "update" and go.hosts == ["dev07"] and go.serial == 1
    stale = ro.decide_slot(plan, state, {}, 0, "run", 1000.0, {"canary": {"digest": "sha256:old"}})
    assert stale.gate == "approval" and "earlier plan" in stale.reason
    # passed, baking: a gate until the bake is over, then the re-check of its committed devices
    state["waves"]["canary"] = {"status": "baking", "bake_until": 1000.0 + 7200}
    bake = ro.decide_slot(plan, state, records(dev07="committed"), 0, "run", 2000.0, approvals)
    assert bake.mode == "stop" and bake.gate == "bake" and "6200 s left" in bake.reason
    check = ro.decide_slot(plan, state, records(dev07="committed"), 0, "run", 9000.0, approvals)
    assert check.mode == "bake_check" and check.hosts == ["dev07"]
    state["waves"]["canary"] = {"status": "baked"}
    assert ro.decide_slot(plan, state, records(dev07="committed"), 0, "run", 9000.0, approvals).mode == "skip"
    assert ro.decide_slot(plan, state, {}, 5, "run", 0.0, {}).mode == "skip"


def test_a_halted_wave_stops_every_run_until_resumed() -> None:
    plan = plan_of(WAVES[1:], FLEET, {})
    state = {"status": "halted", "waves": {"early": {"status": "halted", "reason": "wave early: 3 failed"}}}
    stop = ro.decide_slot(plan, state, {}, 0, "run", 0.0, {})
    assert stop.gate == "halted" and "hup_rollout_action=resume" in stop.reason
    assert ro.decide_slot(plan, state, {}, 0, "resume", 0.0, {}).mode == "update"
    assert ro.decide_slot(plan, {"status": "aborted", "waves": {}}, {}, 0, "run", 0.0, {}).gate == "aborted"


def test_what_a_run_updates_in_progress_deferred_and_failed_on_request() -> None:
    w = wave(["a", "b", "c", "d", "e"])
    recs = records(a="committed", b="in_progress", c="deferred", d="failed")
    assert ro.to_run(w, recs, retry_failed=False) == ["b", "c", "e"]
    assert ro.to_run(w, recs, retry_failed=True) == ["b", "c", "d", "e"]


def test_the_digest_follows_target_waves_and_devices() -> None:
    base = ro.spec_digest("2.113.0", WAVES, FLEET)
    assert base == ro.spec_digest("2.113.0", json.loads(json.dumps(WAVES)), list(reversed(FLEET)))
    assert base != ro.spec_digest("2.114.0", WAVES, FLEET)
    assert base != ro.spec_digest("2.113.0", WAVES[1:], FLEET)
    assert base != ro.spec_digest("2.113.0", WAVES, FLEET[:-1])


# -- the state directory
def test_records_are_whole_files_named_safely(tmp_path: Path) -> None:
    rdir = RolloutDir(str(tmp_path / "r1"))
    rdir.save_record("site/a b", {"status": "committed"})
    assert os.listdir(tmp_path / "r1" / "devices") == ["site%2Fa%20b.json"]
    assert rdir.records(["site/a b", "other"]) == {"site/a b": {"status": "committed"}}
    (tmp_path / "r1" / "devices" / "bad.json").write_text("{")
    with pytest.raises(ro.RolloutError, match="bad: cannot read its rollout record"):
        rdir.records(["bad"])


def test_the_lock_refuses_a_live_run_and_takes_over_a_dead_one(tmp_path: Path) -> None:
    rdir = RolloutDir(str(tmp_path / "r1"))
    assert rdir.acquire(os.getpid(), "r1") is None
    assert rdir.acquire(os.getpid(), "r1") is None  # the same run again (a later play)
    rdir.check_lock(os.getpid(), "r1")
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])  # a live run that is not us
    try:
        here = socket.gethostname()  # a run of this controller: judged by its process
        RolloutDir(str(tmp_path / "r1")).save("lock", {"pid": other.pid, "start": process_start(other.pid), "user": "op",
                                                       "controller": here, "since": "then"})
        with pytest.raises(ro.RolloutError, match=f"driven by another run: ansible-playbook pid {other.pid} of op@{here}"):
            rdir.acquire(os.getpid(), "r1")
        with pytest.raises(ro.RolloutError, match="does not hold the rollout's lock"):
            rdir.check_lock(os.getpid(), "r1")
    finally:
        other.kill()
        other.wait()
    note = rdir.acquire(os.getpid(), "r1")
    assert note and f"pid {other.pid}" in note and "took over" in note
    assert rdir.release(os.getpid()) and not (tmp_path / "r1" / "lock").exists()


def test_a_lock_from_another_controller_is_not_judged_by_this_controllers_processes(tmp_path: Path) -> None:
    """Two controllers sharing one hup_rollout_dir (NFS): the lock of a run on the other one names a
    pid this controller cannot see. It is held (the message names the other controller) until it
    has not been refreshed for the stale bound, or until it is released (the file removed)."""
    rdir = RolloutDir(str(tmp_path / "r1"))
    now = time.time()
    theirs = {"pid": os.getpid(), "start": "1", "user": "op", "controller": "ctl-b", "since": iso(now - 600), "refreshed": iso(now - 60)}
    rdir.save("lock", theirs)
    with pytest.raises(ro.RolloutError) as err:
        rdir.acquire(os.getpid(), "r1")  # the pid is a live process here (this one): not a reason either way
    assert str(err.value) == (
        f"rollout r1 is driven by a run on another controller, ctl-b (ansible-playbook pid {os.getpid()} of op@ctl-b since "
        f"{theirs['since']}, its lock refreshed 60 s ago): this controller, {socket.gethostname()}, cannot see that run's process, so "
        f"its lock holds until it has not been refreshed for 43200 s (hup_rollout_lock_stale_after); wait for that run to end, or, "
        f"if it is gone, remove {rdir.file('lock')}"), err.value
    rdir.save("lock", {**theirs, "pid": 4194303})  # a pid no process here has
    with pytest.raises(ro.RolloutError, match="driven by a run on another controller, ctl-b"):
        rdir.acquire(os.getpid(), "r1", stale_after=3600)
    rdir.save("lock", theirs)
    assert not rdir.holds(os.getpid()), "a pid of another controller is not this run, whatever its number"
    assert rdir.lock_holder() == theirs, "the refused start wrote the lock"
    rdir.save("lock", {**theirs, "refreshed": iso(now - 7200)})
    note = rdir.acquire(os.getpid(), "r1", stale_after=3600)
    assert note == (f"took over the lock of a run on another controller, ctl-b (pid {os.getpid()}, since {theirs['since']}): "
                    "not refreshed for 7200 s, more than 3600 s (hup_rollout_lock_stale_after)"), note
    assert rdir.holds(os.getpid()) and rdir.lock_holder()["controller"] == socket.gethostname()
    rdir.check_lock(os.getpid(), "r1")
    # the run refreshes its lock as it goes (each phase checks it), so that the other controller does not take it for stale
    mine = rdir.lock_holder()
    rdir.save("lock", {**mine, "refreshed": iso(now - 120)})
    rdir.check_lock(os.getpid(), "r1")
    assert rdir.lock_holder()["refreshed"] > iso(now - 1) and rdir.lock_holder()["since"] == mine["since"], rdir.lock_holder()
    rdir.check_lock(os.getpid(), "r1")
    assert rdir.release(os.getpid()) and rdir.lock_holder() is None


def test_judge_lock_by_the_process_on_this_controller_by_the_refresh_on_another() -> None:
    here = {"pid": 10, "start": "5", "user": "op", "controller": "ctl-a", "since": "2026-12-07T10:00:00.000Z"}
    now = 1796644800.0  # 2026-12-07T12:00:00Z, two hours after the lock was taken

    def judge(holder: dict[str, t.Any] | None, holder_start: str | None, stale_after: int = 3600) -> ro_store.LockVerdict:
        return ro_store.judge_lock(holder, pid=10, start="5", host="ctl-a", holder_start=holder_start, now=now, stale_after=stale_after,
                                   rollout_id="r1", path="/d/lock")

    assert judge(None, holder_start=None).kind == "free"
    assert judge(here, holder_start="5").kind == "mine"
    assert judge({**here, "pid": 11}, holder_start="7").kind == "stale", "another process has pid 11 now"
    assert judge({**here, "pid": 11, "start": "7"}, holder_start="7").kind == "held"
    legacy = {k: v for k, v in here.items() if k != "controller"}  # a lock that names no controller: judged here
    assert judge({**legacy, "pid": 11}, holder_start=None).kind == "stale"
    there = {**here, "controller": "ctl-b", "refreshed": "2026-12-07T11:30:00.000Z"}
    assert judge(there, holder_start="5").kind == "held", "this controller's pid 10 is not the other's"
    assert judge(there, holder_start=None).kind == "held", "no pid 10 here says nothing of the other controller"
    there = {k: v for k, v in there.items() if k != "refreshed"}  # never refreshed: its age is the time since it was taken
    assert judge(there, holder_start=None).text.endswith("(hup_rollout_lock_stale_after)") and judge(there, holder_start=None).kind == "stale"
    never = judge(there, holder_start=None, stale_after=0)
    assert never.kind == "held" and "holds until it is released (hup_rollout_lock_stale_after is 0)" in never.text, never.text
    unreadable = judge({**there, "since": "then"}, holder_start=None)
    assert unreadable.kind == "held" and "its lock's age unknown" in unreadable.text, unreadable.text


def test_a_wave_not_done_names_the_devices_lost_in_this_run_apart_from_those_not_updated() -> None:
    w = {**wave(["a", "b", "c", "d"]), "name": "broad"}
    recs = {"a": {"status": "committed", "run": "r2"}, "b": {"status": "in_progress", "run": "r2"},
            "c": {"status": "in_progress", "run": "r1"}}
    reason = ro.not_done_reason(w, recs, "r2")
    assert reason == ("wave broad is not done: b lost during this run's change of it (unreachable after the first change, or the play "
                      "stopped): the state is not known; the next run resumes it; c, d not updated in this run (outside --limit, or the "
                      "play stopped); no later wave starts before"), reason
    assert ro.not_done_reason(w, {**recs, "b": {"status": "committed"}}, "r2").startswith("wave broad is not done: c, d not updated in this run")


def test_a_start_that_fails_leaves_neither_its_lock_nor_a_frozen_plan(tmp_path: Path) -> None:
    """The rollout's start (phase start) refusing an approval of a wave the plan has not writes
    nothing: no plan frozen, and no lock left behind (the next run finds none to take over)."""
    from ansible_collections.osfleet.hup.plugins.action.rollout import ActionModule

    action = ActionModule.__new__(ActionModule)  # the phase alone, without a task around it
    action.rdir, action.pid, action.dry = RolloutDir(str(tmp_path / "r1")), os.getpid(), False
    args = {"phase": "start", "rollout_id": "r1", "action": "run", "target_version": "2.113.0", "waves": [dict(WAVES[1], approval=True), WAVES[2]],
            "fleet": FLEET, "pattern_hosts": {}, "approve": "no-such-wave", "remark": None, "rehearsal": None, "lock_stale_after": 43200}
    with pytest.raises(ro.RolloutError, match="hup_rollout_approve: no wave 'no-such-wave' in the plan"):
        action.phase_start(args)
    # a wave that needs no approval: refused the same way (before: approved, in approvals.json)
    with pytest.raises(ro.RolloutError, match="hup_rollout_approve: wave 'broad' of rollout r1 needs no approval"):
        action.phase_start({**args, "approve": "broad"})
    assert action.rdir.lock_holder() is None, "the failed start left its lock"
    assert action.rdir.plan() is None, "the failed start froze the plan"
    assert action.rdir.approvals() == {}, "the failed start recorded an approval"
    started = action.phase_start({**args, "approve": "early"})
    assert "took over" not in " ".join(started.data["notes"]), started.data["notes"]
    assert action.rdir.lock_holder()["pid"] == os.getpid() and action.rdir.plan() is not None


def test_a_start_that_fails_after_taking_the_lock_releases_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A start that fails once it holds the lock (here the state file cannot be written) releases
    the lock it took; one this run held before (a later play) stays."""
    from ansible_collections.osfleet.hup.plugins.action.rollout import ActionModule

    action = ActionModule.__new__(ActionModule)
    action.rdir, action.pid, action.dry = RolloutDir(str(tmp_path / "r1")), os.getpid(), False
    args = {"phase": "start", "rollout_id": "r1", "action": "run", "target_version": "2.113.0", "waves": WAVES[1:], "fleet": FLEET,
            "pattern_hosts": {}, "approve": None, "remark": None, "rehearsal": None, "lock_stale_after": 43200}
    real_save = RolloutDir.save

    def save(self: RolloutDir, name: str, data: t.Any) -> None:
        if name == "state.json":
            raise ro.RolloutError(f"cannot write {self.file(name)}: disk full")
        real_save(self, name, data)

    monkeypatch.setattr(RolloutDir, "save", save)
    with pytest.raises(ro.RolloutError, match="disk full"):
        action.phase_start(args)
    assert action.rdir.lock_holder() is None, "the failed start left its lock"
    monkeypatch.setattr(RolloutDir, "save", real_save)
    action.phase_start(args)
    monkeypatch.setattr(RolloutDir, "save", save)
    with pytest.raises(ro.RolloutError, match="disk full"):
        action.phase_start(args)
    assert action.rdir.lock_holder()["pid"] == os.getpid(), "the lock this run held before went"


def test_an_approval_of_a_wave_the_plan_has_not_is_refused_naming_the_wave_and_the_waves() -> None:
    """One rule (plugin_utils.rollout_approval.check_approval) for the real start, --check and the plan."""
    plan = plan_of(WAVES, FLEET, {"canary": ["dev07"]})
    assert ro_approval.check_approval(plan, None) is None and ro_approval.check_approval(plan, "") is None
    assert ro_approval.check_approval(plan, "canary") is None
    with pytest.raises(ro.RolloutError) as err:
        ro_approval.check_approval(plan, "erly")
    assert str(err.value) == ("hup_rollout_approve: no wave 'erly' in the plan of rollout r1 (its waves: canary, early, broad): "
                              "nothing approved, nothing written"), err.value


def test_an_approval_of_a_wave_that_needs_none_is_refused_naming_the_wave_and_the_gated_ones() -> None:
    """Before: recorded in approvals.json and reported 'wave early approved', an approval that means nothing."""
    plan = plan_of(WAVES, FLEET, {"canary": ["dev07"]})
    with pytest.raises(ro.RolloutError) as err:
        ro_approval.check_approval(plan, "early")
    assert str(err.value) == ("hup_rollout_approve: wave 'early' of rollout r1 needs no approval (it does not set approval: true; "
                              "the waves that wait for one: canary): nothing approved, nothing written"), err.value
    ungated = plan_of(WAVES[1:], FLEET, {})
    with pytest.raises(ro.RolloutError, match=r"wave 'broad' of rollout r1 needs no approval \(it does not set approval: true; "
                                              r"no wave of its plan waits for one\)"):
        ro_approval.check_approval(ungated, "broad")


@pytest.mark.parametrize("check_mode, action", [(True, "run"), (False, "plan"), (True, "plan"), (True, "revert")])
def test_a_dry_start_refuses_an_approval_of_a_wave_the_plan_has_not_and_writes_nothing(tmp_path: Path, check_mode: bool, action: str) -> None:
    """--check and hup_rollout_action=plan refuse hup_rollout_approve of an unknown wave as the
    real start does (9a6eaf9), before the plan is shown; nothing is written."""
    from types import SimpleNamespace

    from ansible_collections.osfleet.hup.plugins.action.rollout import ActionModule

    module = ActionModule.__new__(ActionModule)
    args = {"phase": "start", "rollout_id": "r1", "dir": str(tmp_path / "r1"), "action": "run", "target_version": "2.113.0",
            "waves": [dict(WAVES[1], approval=True), WAVES[2]], "fleet": FLEET, "pattern_hosts": {}, "approve": None, "remark": None,
            "rehearsal": None, "lock_stale_after": 43200}
    if action == "revert":  # a revert's check needs a frozen plan
        module._task = SimpleNamespace(check_mode=False)
        module.step(args)
        module.rdir.release(module.pid)
    before = sorted((p.name, p.stat().st_mtime_ns) for p in tmp_path.rglob("*"))
    module._task = SimpleNamespace(check_mode=check_mode)
    with pytest.raises(ro.RolloutError, match=r"^hup_rollout_approve: no wave 'no-such-wave' in the plan of rollout r1 \(its waves: early, broad\)"):
        module.step({**args, "action": action, "approve": "no-such-wave"})
    with pytest.raises(ro.RolloutError, match=r"^hup_rollout_approve: wave 'broad' of rollout r1 needs no approval"):
        module.step({**args, "action": action, "approve": "broad"})
    assert module.dry and sorted((p.name, p.stat().st_mtime_ns) for p in tmp_path.rglob("*")) == before, "the dry start wrote"
    shown = module.step({**args, "action": action, "approve": "early"})
    assert shown.changed is False and sorted((p.name, p.stat().st_mtime_ns) for p in tmp_path.rglob("*")) == before

# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The lock step's decision (steps/lock.py): take, keep, take over or release the lock."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import typing as t

import pytest
from documented import documented
from prepare_model import (
    BOB,
    ME,
    NOW,
    OLD,
    RECENT,
    lock_of,
    make_state,
)

from ansible_collections.osfleet.hup.plugins.plugin_utils.errors import PlanError
from ansible_collections.osfleet.hup.plugins.plugin_utils.steps.lock import UNREADABLE_TOKEN, LockArgs, decide_lock, holder_text, lock_token


def lock_args(**kw: t.Any) -> LockArgs:
    """The lock step's arguments: the documented defaults, owner ME, then ``kw`` (LockArgs fields)."""
    return dataclasses.replace(LockArgs.from_args(documented("lock", owner=ME)), **kw)


#: a lock refreshed 10 s ago by the device's uptime (its wall-clock since says 3 h: an NTP jump)
LIVE = {"since": OLD, "uptime": 4990.0, "boot_id": "b1"}
#: its run was recorded as interrupted by the device's watchdog
INTERRUPTED = {**LIVE, "interrupted": {"reason": "no word from the controller for 60 s", "uptime": 4900.0, "boot_id": "b1"}}
FREE = {"interrupted": None}

LOCK_CASES: list[tuple[str, dict[str, t.Any], dict[str, t.Any], str, str | None, dict[str, t.Any] | None]] = [
    # (name, state kwargs, lock args, op, error fragment, lock after)
    ("take a free lock", {}, {"run_id": "r1", "target": "2.113.0"}, "write", None,
     {"owner": ME, "run_id": "r1", "since": None, "target": "2.113.0", **FREE}),
    ("same owner, same run: a refresh", {"lock": lock_of(ME)}, {"run_id": "r1", "target": "2.113.0"}, "refresh", None, {**lock_of(ME), **FREE}),
    ("same owner, no run id given: a refresh", {"lock": lock_of(ME)}, {}, "refresh", None, {**lock_of(ME), **FREE}),
    ("same owner, lock without run id: takes the run id", {"lock": lock_of(ME, run_id=None)}, {"run_id": "r2"}, "write", None,
     {**lock_of(ME, run_id="r2"), **FREE}),
    ("same owner, another run, live lock", {"lock": lock_of(ME, **LIVE)}, {"run_id": "r2"}, "none",
     "lock held by ops@controller (run r1) since 2027-01-15T05:00:00Z, last refreshed 10 s ago; to resume that run, run again as "
     "ops@controller with hup_run_id=r1 (lock run_id=r1); to take the lock over, set hup_lock_force=true", None),
    ("same owner, another run, interrupted", {"lock": lock_of(ME, **INTERRUPTED)}, {"run_id": "r2"}, "write", None,
     {"owner": ME, "run_id": "r2", "since": None, "target": None, **FREE}),
    ("same owner, another run, stale by uptime", {"lock": lock_of(ME, since=RECENT, uptime=100.0, boot_id="b1")},
     {"run_id": "r2", "stale_after": 3600}, "write", None,
     {"owner": ME, "run_id": "r2", "since": None, "target": None, **FREE}),
    ("same run, interrupted: resumed", {"lock": lock_of(ME, **INTERRUPTED)}, {"run_id": "r1"}, "write", None, {**lock_of(ME, since=OLD), **FREE}),
    ("another owner", {"lock": lock_of(BOB)}, {}, "none", "update already in progress: lock held by bob@laptop (run r1) since 2027-01-15T07:50:00Z", None),
    ("another owner, stale", {"lock": lock_of(BOB, since=OLD)}, {"run_id": "r9"}, "write", None,
     {"owner": ME, "run_id": "r9", "since": None, "target": None, **FREE}),
    ("another owner, old by the wall clock, refreshed by uptime (NTP jump)", {"lock": lock_of(BOB, **LIVE)}, {"run_id": "r9"}, "none",
     "last refreshed 10 s ago", None),
    ("another owner, interrupted: says how to resume or take over", {"lock": lock_of(BOB, **INTERRUPTED)}, {"run_id": "r9"}, "none",
     "its run was interrupted: no word from the controller for 60 s; to resume that run, run again as bob@laptop with hup_run_id=r1", None),
    ("another owner, refreshed before this boot, younger than the boot", {"lock": lock_of(BOB, **{**LIVE, "boot_id": "b0"}), "uptime": 60.0}, {}, "none",
     "last refreshed before the device's current boot (at least 60 s ago)", None),
    ("another owner, refreshed before this boot, boot older than stale_after", {"lock": lock_of(BOB, **{**LIVE, "boot_id": "b0"}), "uptime": 8000.0},
     {}, "write", None,
     {"owner": ME, "run_id": None, "since": None, "target": None, **FREE}),
    ("another owner, never stale", {"lock": lock_of(BOB, since=OLD)}, {"stale_after": 0}, "none", "lock held by bob@laptop", None),
    ("another owner, force", {"lock": lock_of(BOB)}, {"force": True}, "write", None, {"owner": ME, "run_id": None, "since": None, "target": None, **FREE}),
    ("unreadable lock", {"lock": "not json"}, {}, "none", "is unreadable; use force=true", None),
    ("unreadable lock, force", {"lock": "not json"}, {"force": True}, "write", None, {"owner": ME, "run_id": None, "since": None, "target": None, **FREE}),
    ("reference updater holds its lock", {"legacy_lock": True}, {}, "none", "/var/lock/resinhup.lock is held", None),
    ("release own lock", {"lock": lock_of(ME)}, {"state": "absent"}, "remove", None, None),
    ("release own run's lock", {"lock": lock_of(ME)}, {"state": "absent", "run_id": "r1"}, "remove", None, None),
    ("release: another run's live lock", {"lock": lock_of(ME, **LIVE)}, {"state": "absent", "run_id": "r2"}, "none",
     "lock held by ops@controller (run r1) since 2027-01-15T05:00:00Z, last refreshed 10 s ago, not by this run (ops@controller, run r2)", None),
    ("release: another run's interrupted lock", {"lock": lock_of(ME, **INTERRUPTED)}, {"state": "absent", "run_id": "r2"}, "remove", None, None),
    ("release: no lock", {}, {"state": "absent"}, "none", None, None),
    ("release another's lock", {"lock": lock_of(BOB)}, {"state": "absent"}, "none",
     "lock held by bob@laptop (run r1) since 2027-01-15T07:50:00Z, last refreshed 600 s ago, not by this run (ops@controller", None),
    ("release another's lock, force", {"lock": lock_of(BOB)}, {"state": "absent", "force": True}, "remove", None, None),
    ("release an unreadable lock, force", {"lock": "x"}, {"state": "absent", "force": True}, "remove", None, None),
    ("release while the reference updater runs", {"lock": lock_of(ME), "legacy_lock": True}, {"state": "absent"}, "remove", None, None),
]


@pytest.mark.parametrize(("state_kw", "lock_kw", "op", "error", "after"), [c[1:] for c in LOCK_CASES], ids=[c[0] for c in LOCK_CASES])
def test_lock(state_kw: dict[str, t.Any], lock_kw: dict[str, t.Any], op: str, error: str | None,
              after: dict[str, t.Any] | None) -> None:
    state = make_state(**state_kw)
    if error:
        assert op == "none"
        with pytest.raises(PlanError) as exc:
            decide_lock(lock_args(**lock_kw), state, now=NOW)
        assert error in str(exc.value)
        # the failed result still shows who holds the lock
        assert exc.value.data["lock"] == exc.value.data["previous"]
        if state.lock:
            assert exc.value.data["lock"]["owner"] == state.lock["owner"]
        return
    plan = decide_lock(lock_args(**lock_kw), state, now=NOW)
    assert plan.op == op
    if op in ("write", "remove"):
        assert plan.after == after
        assert plan.actions
    else:
        assert plan.actions == []
        if op == "refresh":
            assert plan.after == after
        else:
            assert plan.after == plan.before


def test_watchdog_of_this_run_holding_the_reference_lock_is_not_another_updater() -> None:
    """The run's own watchdog holds /var/lock/resinhup.lock: resuming the run must not see another updater."""
    state = make_state(lock=lock_of(ME), legacy_lock=True)
    state.raw["watchdog_run"] = "r1"
    from ansible_collections.osfleet.hup.plugins.plugin_utils.device import parse_state
    assert decide_lock(lock_args(run_id="r1"), parse_state(state.raw), now=NOW).op == "refresh"


def test_lock_expect_token_matches_the_probe() -> None:
    assert decide_lock(lock_args(), make_state(), now=NOW).expect == ""
    assert decide_lock(lock_args(force=True), make_state(lock=lock_of(BOB)), now=NOW).expect == f"{BOB}|r1|{RECENT}"
    assert decide_lock(lock_args(force=True), make_state(lock="junk"), now=NOW).expect == UNREADABLE_TOKEN


@pytest.mark.skipif(shutil.which("jq") is None, reason="jq not installed")
@pytest.mark.parametrize("doc", [
    {"owner": "a@b", "since": "2027-01-15T07:50:00Z"},
    {"owner": "a@b"},
    {"owner": "x y|z", "since": 5},
    {"owner": None, "since": None, "run_id": "r"},
    {"owner": "ünï@cödé", "since": "t", "target": "2.113.0"},
])
def test_lock_token_is_what_jq_prints(doc: dict[str, t.Any]) -> None:
    """The act script compares the lock file with jq; the controller's token must be the same text."""
    out = subprocess.run(["jq", "-r", '"\\(.owner)|\\(.run_id)|\\(.since)"'], input=json.dumps(doc), capture_output=True, text=True, check=True)
    assert out.stdout.rstrip("\n") == lock_token(doc)


def test_check_mode_release_of_the_lock_this_run_takes() -> None:
    """Issue 8: check mode takes no lock, so the release of the role's run (assume_held) is planned as
    the change the real run reports; outside check mode, and with a lock held, the device decides."""
    args = documented("lock", owner=ME, state="absent", run_id="r1", assume_held=True)
    plan = decide_lock(LockArgs.from_args(args, check_mode=True), make_state())
    assert plan.op == "remove" and plan.after is None
    assert plan.before is not None and (plan.before["owner"], plan.before["run_id"]) == (ME, "r1")
    assert plan.actions == [f"released the update lock of {ME} (the one this run takes)"]
    assert decide_lock(LockArgs.from_args(args, check_mode=False), make_state()).op == "none"
    assert decide_lock(LockArgs.from_args(dict(args, assume_held=False), check_mode=True), make_state()).op == "none"


def test_check_mode_diff_of_the_lock_shows_who_holds_it_before_and_after() -> None:
    """--check --diff of a whole update (issue 8): the take shows no lock, then this run's (since now);
    the release (assume_held) this run's lock, then none; an interrupted lock names its reason."""
    take = decide_lock(LockArgs.from_args(documented("lock", owner=ME, run_id="r1", target_version="2.113.0"), check_mode=True), make_state(), now=NOW)
    assert holder_text(take.before) == "(no lock)\n"
    assert holder_text(take.after) == f"owner: {ME}\nrun_id: r1\nsince: (now)\ntarget: 2.113.0\n"
    # the role's release names the target too, so that the lock it plans to release is the one the take plans
    release = decide_lock(LockArgs.from_args(documented("lock", owner=ME, state="absent", run_id="r1", target_version="2.113.0", assume_held=True),
                                             check_mode=True), make_state())
    assert holder_text(release.before) == holder_text(take.after) and holder_text(release.after) == "(no lock)\n"
    interrupted = holder_text({"owner": BOB, "run_id": "r9", "since": "2027-01-15T05:00:00Z", "target": None, "interrupted": {"reason": "no word"}})
    assert interrupted == f"owner: {BOB}\nrun_id: r9\nsince: 2027-01-15T05:00:00Z\ntarget: -\ninterrupted: no word\n"

# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Canary rollouts (issue 11): ``osfleet.hup.rollout`` on a lab of seven balenaOS devices on 2.88.4,
one rollout to 2.113.0 driven through its life, each test going on from where the one before left it:

1. ``hup_rollout_action=plan`` prints each wave's devices with the method, source and bytes of
   each, the limits as counts and the totals, and writes nothing (no state directory, devices as before).
2. The canary powered off: it is deferred, the rollout pauses, the run fails saying why, and no
   device of a later wave is touched (version, env, lock, supervisor, boot: read from the devices).
3. The canary back, two of the three devices of the wave ``early`` given a health fault
   (``labctl fault NAME health``: the new OS's health check fails): the canary is committed, the
   two are updated, rolled back and run 2.88.4 again with their data intact, ``early`` halts at
   its 2nd failure, the run fails naming the wave and the devices, the devices of ``broad`` are
   untouched; the report (report.json) says so.
4. The faults cleared, ``resume``: the controller is killed while ``broad`` updates; the next run
   (``retry_failed``, which tries again a release that rolled back on the devices it retries)
   finishes it and brings the two failed devices to 2.113.0: no device is updated twice (one run
   log and one attempt each), no record is lost, the rollout is done.
5. A run of the done rollout changes nothing; a changed target is refused until ``replan``.
6. A new rollout (``r2``, one wave: the canary) over a device that already runs the target,
   committed, with no record of ``r2`` (updated by ``r1``, as by hand or by osfleet.hup.update):
   its plan says it is already on the target; the run records it ``current`` (not left
   ``in_progress`` by the standard role's end of the host), the wave passes, the rollout is done
   (rc 0, report.json), the device neither rebooted nor changed; the next run changes nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import typing as t
from pathlib import Path

import pytest

from osfleet_harness import Lab, PlaybookRun, ansible_playbook, kill_controller

LAB_PREFIX = "itrol"
SOURCE, TARGET = "2.88.4", "2.113.0"
ROLLOUT = "r1"


@pytest.fixture(scope="module")
def lab(make_lab: t.Callable[..., Lab]) -> Lab:
    return make_lab(LAB_PREFIX + os.environ.get("OSFLEET_LAB_SUFFIX", ""), 7, SOURCE, "balenaos")


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("rollout")


def canary(lab: Lab) -> str:
    return lab.hosts[0]


def waves(lab: Lab) -> list[dict[str, t.Any]]:
    return [
        {"name": "canary", "hosts": canary(lab), "max_failures": 0},
        {"name": "early", "percent": 50, "max_failures": 1},  # 3 of the 6 left
        {"name": "broad", "percent": 100, "max_failures": "40%", "max_concurrent": 2},  # 2 batches
    ]


def rollout(lab: Lab, work: Path, name: str, target: str = TARGET, check: bool = False, **extra: t.Any) -> PlaybookRun:
    return ansible_playbook(
        lab, *(["--check"] if check else []), workdir=work / name, playbook="osfleet.hup.rollout", callbacks=["osfleet.hup.report"],
        extra_vars={"hup_target_version": target, "hup_rollout_id": ROLLOUT, "hup_rollout_dir": str(work / "state"),
                    "hup_waves": waves(lab), **extra})


def state_dir(work: Path) -> Path:
    return work / "state"


def record(work: Path, host: str) -> dict[str, t.Any]:
    return t.cast(dict[str, t.Any], json.loads((state_dir(work) / "devices" / f"{host}.json").read_text()))


def frozen(work: Path) -> dict[str, list[str]]:
    plan = json.loads((state_dir(work) / "plan.json").read_text())
    return {w["name"]: w["hosts"] for w in plan["waves"]}


def expected_members(lab: Lab) -> dict[str, list[str]]:
    """The waves as the issue defines them: the canary by name, then half of the rest and the rest
    by a stable hash of the device name (sha256), computed here independently of the collection."""
    rest = sorted((h for h in lab.hosts if h != canary(lab)), key=lambda h: hashlib.sha256(h.encode()).hexdigest())
    return {"canary": [canary(lab)], "early": sorted(rest[:3]), "broad": sorted(rest[3:])}


def untouched(lab: Lab, hosts: t.Iterable[str], before: dict[str, t.Any]) -> None:
    """Nothing of an update happened on ``hosts``: the same boot, version and env, no lock, the
    supervisor running."""
    for host in hosts:
        now = lab.state(host)
        assert now == before[host], f"{host}: touched: {now} != {before[host]}"
        assert now.version == SOURCE and now.lock == "" and now.supervisor_active and now.env.get("upgrade_available", "0") == "0", now


def report(work: Path) -> dict[str, t.Any]:
    return t.cast(dict[str, t.Any], json.loads((state_dir(work) / "report" / "report.json").read_text()))


#: a user's files on the data partition, which a rolled-back update leaves as they were
USER_DATA = "/mnt/data/osfleet-rollout"


def write_user_data(lab: Lab, host: str) -> dict[str, str]:
    lab.sh(host, 'mkdir -p "$1" && dd if=/dev/urandom of="$1/chunk.bin" bs=65536 count=4 2>/dev/null && date +%s > "$1/settings.conf" && sync', USER_DATA)
    return lab.sha256_tree(host, USER_DATA)


def test_the_plan_shows_every_device_and_changes_nothing(lab: Lab, work: Path) -> None:
    before = {h: lab.state(h) for h in lab.hosts}
    result = rollout(lab, work, "plan", hup_rollout_action="plan")
    assert result.rc == 0, result.summary()
    assert not state_dir(work).exists(), "the plan wrote the state directory"
    members = expected_members(lab)
    for wave, limit in (("canary", "halts at the 1st failure"), ("early", "halts at the 2nd failure"), ("broad", "halts at the 2nd failure (40% of 3)")):
        assert f"{wave}: {len(members[wave])} device(s) ({', '.join(members[wave])}), {limit}" in result.stdout, result.stdout
    for host in lab.hosts:
        assert f"  {host}: method balenahup [rule: standard], source delta, " in result.stdout, (host, result.stdout[-3000:])
    assert "plan: 7 device(s) in 3 wave(s), 7 to update (" in result.stdout and ", 0 would fail" in result.stdout
    assert {h: lab.state(h) for h in lab.hosts} == before, "the plan changed a device"


def test_an_offline_canary_is_deferred_and_no_later_wave_starts(lab: Lab, work: Path) -> None:
    before = {h: lab.state(h) for h in lab.hosts if h != canary(lab)}
    lab.powercut(canary(lab))
    try:
        result = rollout(lab, work, "offline")
    finally:
        lab.poweron(canary(lab))
    assert result.rc != 0, result.summary()
    assert "paused: wave canary: 1 device(s) deferred" in result.stdout and f"({canary(lab)}: unreachable before any change)" in result.stdout
    assert frozen(work) == expected_members(lab)
    assert record(work, canary(lab))["status"] == "deferred"
    assert not [p.name for p in (state_dir(work) / "devices").iterdir() if p.name != f"{canary(lab)}.json"], "a later wave's device has a record"
    untouched(lab, before, before)
    data = report(work)
    (dev,) = [d for d in data["devices"] if d["name"] == canary(lab)]
    assert dev["outcome"] == "deferred" and dev["wave"] == "canary", dev
    assert {d["name"]: d["outcome"] for d in data["devices"] if d["name"] != canary(lab)} == dict.fromkeys(before, "skipped")


def test_a_wave_past_its_limit_halts_and_later_waves_are_untouched(lab: Lab, work: Path) -> None:
    members = frozen(work)
    faulty = members["early"][:2]
    data = {}
    for host in faulty:
        assert lab.fault(host, "health").startswith(f"{host}: fault health set (every root but "), lab.status()
        data[host] = write_user_data(lab, host)
    before = {h: lab.state(h) for h in members["broad"]}
    result = rollout(lab, work, "halt")
    assert result.rc != 0, result.summary()
    assert lab.state(canary(lab)).version == TARGET and record(work, canary(lab))["status"] == "committed"
    halted = f"wave early: 2 failed ({', '.join(sorted(faulty))}) > limit 1 (halts at the 2nd failure): the rollout halted"
    assert halted in result.stdout, result.stdout[-3000:]
    for host in faulty:  # changed, then rolled back: the source runs again, committed, the data as before
        rec = record(work, host)
        assert rec["status"] == "failed" and rec["attempt"] == 1, rec
        assert "failed at step health: the device rolled back" in rec["reason"], rec
        assert f"rolled back (health), the device runs {SOURCE} again" in rec["reason"], rec
        now = lab.state(host)
        assert (now.version, now.active_root) == (SOURCE, "resin-rootA") and now.committed and now.lock == "" and now.supervisor_active, now
        assert lab.sha256_tree(host, USER_DATA) == data[host], f"{host}: its data changed"
    (ok,) = [h for h in members["early"] if h not in faulty]
    assert record(work, ok)["status"] == "committed" and lab.state(ok).version == TARGET
    untouched(lab, members["broad"], before)
    for host in [canary(lab), *members["early"]]:  # one check of the variables and the spec, then the role's tasks (issue 13)
        tasks = result.host_results(host)
        assert not [r.task for r in tasks if r.action.endswith("validate_argument_spec")], f"{host}: the role's argument validation ran"
        checks = [(r.action, r.event) for r in tasks if r.task.endswith("Check the hup_* variables")]  # (the role's task: "ROLE : NAME")
        assert checks == [("ansible.builtin.include_role", "ok"), ("ansible.builtin.assert", "ok")], (host, checks)
    data = report(work)
    assert [(w["name"], w["halted"]) for w in data["waves"]] == [("canary", False), ("early", True), ("broad", False)], data["waves"]
    assert "the rollout halted" in data["waves"][1]["decision"]
    assert data["run"]["ok"] is False
    # the next run without an action: still halted, nothing touched
    again = rollout(lab, work, "halted-again")
    assert again.rc != 0 and "hup_rollout_action=resume" in again.stdout
    untouched(lab, members["broad"], before)


def test_resume_finishes_the_rest_after_a_killed_controller_without_updating_twice(lab: Lab, work: Path) -> None:
    members = frozen(work)
    for host in members["early"][:2]:
        assert lab.fault(host, "clear") == f"{host}: cleared the faults health", lab.status()
    broad = members["broad"]

    def writing(events: list[dict[str, t.Any]]) -> bool:
        return any(e["event"] == "start" and e["host"] in broad and "Write the inactive root partition" in e["task"] for e in events)

    killed = ansible_playbook(
        lab, workdir=work / "killed", playbook="osfleet.hup.rollout", trigger=writing, on_trigger=kill_controller,
        extra_vars={"hup_target_version": TARGET, "hup_rollout_id": ROLLOUT, "hup_rollout_dir": str(state_dir(work)),
                    "hup_waves": waves(lab), "hup_rollout_action": "resume"})
    assert killed.triggered_at is not None and killed.rc != 0, killed.summary()
    in_progress = [h for h in broad if (state_dir(work) / "devices" / f"{h}.json").exists() and record(work, h)["status"] == "in_progress"]
    assert in_progress, "the kill hit a device of broad during its update"

    # the next run goes on where the killed one stopped and tries the two failed devices again
    failed = [h for h in members["early"] if record(work, h)["status"] == "failed"]
    assert len(failed) == 2 and all(lab.state(h).version == SOURCE for h in failed)
    retried = rollout(lab, work, "after-kill", hup_rollout_action="retry_failed")
    assert retried.rc == 0, retried.summary()
    for host in [canary(lab), *broad, *[h for h in members["early"] if h not in failed]]:
        rec = record(work, host)
        assert rec["status"] == "committed" and rec["attempt"] == 1, rec
        assert lab.state(host).version == TARGET and lab.state(host).committed
        logs = lab.run_logs(host)
        assert len(logs) == 1, f"{host}: updated more than once: {sorted(logs)}"
        assert list(logs) == [f"osfleet-hup.{rec['run_id']}.log"] and logs[list(logs)[0]][-1]["outcome"] == "committed"
    for host in failed:
        rec = record(work, host)
        assert rec["status"] == "committed" and rec["attempt"] == 2 and lab.state(host).version == TARGET, rec
    assert "rollout r1 to 2.113.0: done (every wave passed)" in retried.stdout
    assert json.loads((state_dir(work) / "state.json").read_text())["status"] == "done"
    assert not (state_dir(work) / "lock").exists(), "the run released the lock"


def test_a_done_rollout_changes_nothing_and_a_changed_spec_is_refused(lab: Lab, work: Path) -> None:
    boots = {h: lab.state(h).boot_id for h in lab.hosts}
    result = rollout(lab, work, "done")
    assert result.rc == 0, result.summary()
    assert not [r for r in result.results if r.host in lab.hosts and r.changed], "a run of a done rollout changed a device"
    assert "rollout r1 to 2.113.0: done (every wave passed)" in result.stdout
    changed = rollout(lab, work, "changed", target="2.114.0")
    assert changed.rc != 0
    assert "rollout r1: the target changed from 2.113.0 to 2.114.0 since the plan was frozen" in changed.stdout
    assert "hup_rollout_action=replan" in changed.stdout
    assert {h: lab.state(h).boot_id for h in lab.hosts} == boots


def test_a_new_rollout_over_a_device_already_on_the_target_records_it_current(lab: Lab, work: Path) -> None:
    host = canary(lab)
    before = lab.state(host)
    assert before.version == TARGET and before.committed and before.lock == "", before
    state = work / "state-r2"
    extra = {"hup_target_version": TARGET, "hup_rollout_id": "r2", "hup_rollout_dir": str(state),
             "hup_waves": [{"name": "again", "hosts": host, "max_failures": 0}]}

    def run(name: str, *args: str, **more: t.Any) -> PlaybookRun:
        return ansible_playbook(lab, *args, workdir=work / name, playbook="osfleet.hup.rollout", callbacks=["osfleet.hup.report"],
                                extra_vars={**extra, **more})

    plan = run("r2-plan", hup_rollout_action="plan")
    assert plan.rc == 0, plan.summary()
    assert f"  {host}: already on {TARGET} (method " in plan.stdout and "0 to update (" in plan.stdout, plan.stdout[-3000:]
    assert not state.exists(), "the plan wrote the state directory"

    result = run("r2")
    assert result.rc == 0, result.summary()
    rec = t.cast(dict[str, t.Any], json.loads((state / "devices" / f"{host}.json").read_text()))
    assert (rec["status"], rec["wave"], rec["attempt"], rec["os_version"], rec["boot_id"]) == ("current", "again", 1, TARGET, before.boot_id), rec
    assert "rollout r2 to 2.113.0: done (every wave passed)" in result.stdout, result.stdout[-3000:]
    assert "is not done" not in result.stdout, result.stdout[-3000:]
    assert json.loads((state / "state.json").read_text())["status"] == "done"
    data = json.loads((state / "report" / "report.json").read_text())
    assert [(d["name"], d["outcome"], d["wave"]) for d in data["devices"] if d["name"] == host] == [(host, "current", "again")], data["devices"]
    assert [(w["name"], w["halted"]) for w in data["waves"]] == [("again", False)] and data["run"]["ok"] is True, data
    # (the rollout's records, written on the controller, are its only changes)
    assert not [r.task for r in result.changed(host) if r.action != "osfleet.hup.rollout"], [r.task for r in result.changed(host)]
    assert lab.state(host) == before, "the device changed (or rebooted)"

    again = run("r2-again")
    assert again.rc == 0, again.summary()
    assert not [r for r in again.results if r.host in lab.hosts and r.changed], "a run of a done rollout changed a device"
    assert "rollout r2 to 2.113.0: done (every wave passed)" in again.stdout
    assert json.loads((state / "devices" / f"{host}.json").read_text()) == rec, "the second run changed the record"
    assert lab.state(host) == before

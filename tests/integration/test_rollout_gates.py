# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The gates of a rollout (issue 11) on a lab of three balenaOS devices on 2.88.4: a wave
``canary`` of two devices with a bake and a limit of one failure, then a wave ``main`` (the
third) behind an approval gate. One rollout to 2.113.0, each test going on from the one before:

1. ``hup_rollout_action=plan`` prints per device its wave, method and source; the real runs that
   follow do exactly that (the records' wave and method, each run's report.json source).
2. The first run, approving ``main`` ahead (approvals.json: who, when, the plan digest), updates
   the canary wave and stops at its bake (rc 0, "bakes until"); ``main``'s device is untouched.
3. During the bake one canary device falls back to the old OS (its boot env switched back to the
   old root, then a power cycle: it boots 2.88.4), and the spec changes (``replan``). After the
   bake the read-only re-check counts that device as a failure of ``canary`` (record failed, the
   wave's counts), the other one baked; then ``main`` waits for approval again, the approval being
   for the earlier plan (rc 0, its device untouched).
4. ``-e hup_rollout_approve=main`` records the approval for the new plan's digest and the rollout
   goes on: ``main``'s device is committed, the rollout done; the plan matched (test 1), and the
   fleet inventory (the lab's lab.fleet.yml, ``os_version_from`` the rollout's state directory)
   groups the devices by the OS version the rollout last saw them run.
"""

from __future__ import annotations

import getpass
import json
import os
import re
import subprocess
import time
import typing as t
from datetime import datetime
from pathlib import Path

import pytest
import yaml

from osfleet_harness import VENV_BIN, Lab, PlaybookRun, ansible_playbook, collections_path

LAB_PREFIX = "itgate"
SOURCE, TARGET = "2.88.4", "2.113.0"
ROLLOUT = "g1"
BAKE = 5  # seconds


@pytest.fixture(scope="module")
def lab(make_lab: t.Callable[..., Lab]) -> Lab:
    return make_lab(LAB_PREFIX + os.environ.get("OSFLEET_LAB_SUFFIX", ""), 3, SOURCE, "balenaos")


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gates")


@pytest.fixture(scope="module")
def seen() -> dict[str, t.Any]:
    """What the tests of the module hand on: the plan's lines, each run's report.json."""
    return {"reports": []}


def canaries(lab: Lab) -> list[str]:
    return lab.hosts[:2]


def fallen(lab: Lab) -> str:
    return lab.hosts[1]


def main_host(lab: Lab) -> str:
    return lab.hosts[2]


def waves(lab: Lab, main_failures: int = 0) -> list[dict[str, t.Any]]:
    return [
        {"name": "canary", "hosts": ":".join(canaries(lab)), "max_failures": 1, "bake": f"{BAKE}s"},
        {"name": "main", "percent": 100, "max_failures": main_failures, "approval": True},
    ]


def state(work: Path) -> Path:
    return work / "state"


def load(work: Path, name: str) -> t.Any:
    return json.loads((state(work) / name).read_text())


def record(work: Path, host: str) -> dict[str, t.Any]:
    return t.cast(dict[str, t.Any], load(work, f"devices/{host}.json"))


def rollout(lab: Lab, work: Path, seen: dict[str, t.Any], name: str, main_failures: int = 0, **extra: t.Any) -> PlaybookRun:
    result = ansible_playbook(
        lab, workdir=work / name, playbook="osfleet.hup.rollout", callbacks=["osfleet.hup.report"],
        extra_vars={"hup_target_version": TARGET, "hup_rollout_id": ROLLOUT, "hup_rollout_dir": str(state(work)),
                    "hup_waves": waves(lab, main_failures), **extra})
    report = state(work) / "report" / "report.json"
    if report.exists() and extra.get("hup_rollout_action") != "plan":
        data = json.loads(report.read_text())
        # the rollout never lets Ansible stop a play: no device is ever "not tried" (the rehearsal
        # gate's play, ended by itself when no evidence is required, once made every device look so)
        assert data["run"]["not_tried"] == [], data["run"]
        seen["reports"].append(data)
    return result


def untouched(lab: Lab, host: str, before: t.Any) -> None:
    now = lab.state(host)
    assert now == before and now.version == SOURCE and now.lock == "" and now.env.get("upgrade_available", "0") == "0", (before, now)


def test_the_plan_names_wave_method_and_source_per_device(lab: Lab, work: Path, seen: dict[str, t.Any]) -> None:
    result = rollout(lab, work, seen, "plan", hup_rollout_action="plan")
    assert result.rc == 0, result.summary()
    assert not state(work).exists(), "the plan wrote the state directory"
    planned: dict[str, dict[str, str]] = {}
    for wave, hosts in re.findall(r'"wave \d+ (\w+): \d+ device\(s\) \(([^)]*)\)', result.stdout):
        for host in hosts.split(", "):
            planned[host] = {"wave": wave}
    for host, method, rule, source, nbytes in re.findall(
            r'"  ([\w.-]+): method (\w+)(?: \[rule: ([^\]]+)\])?, source ([\w -]+), (\d+) bytes to download"', result.stdout):
        planned[host].update(method=method, rule=rule, source=source, bytes=int(nbytes))
    delta = {h: planned.get(h, {}).pop("bytes", None) for h in lab.hosts}
    assert planned == {**{h: {"wave": "canary", "method": "balenahup", "rule": "standard", "source": "delta"} for h in canaries(lab)},
                       main_host(lab): {"wave": "main", "method": "balenahup", "rule": "standard", "source": "delta"}}, result.stdout[-3000:]
    assert all(n and n > 0 for n in delta.values()), delta  # hostapp-update's pull of the delta
    for host in lab.hosts:
        planned[host]["bytes"] = delta[host]
    seen["plan"] = planned


def test_the_first_run_stops_at_the_bake_and_records_an_approval_ahead(lab: Lab, work: Path, seen: dict[str, t.Any]) -> None:
    before = lab.state(main_host(lab))
    result = rollout(lab, work, seen, "bake", hup_rollout_approve="main")
    assert result.rc == 0, result.summary()
    assert re.search(r"wave canary passed \(wave canary: 2 done, 0 failed \(limit 1\), 0 deferred\); it bakes until \S+: run again then",
                     result.stdout), result.stdout[-3000:]
    for host in canaries(lab):
        now = lab.state(host)
        assert record(work, host)["status"] == "committed" and (now.version, now.active_root) == (TARGET, "resin-rootB") and now.committed, now
    untouched(lab, main_host(lab), before)
    assert not (state(work) / f"devices/{main_host(lab)}.json").exists()
    approval = load(work, "approvals.json")["main"]
    assert approval["by"] == getpass.getuser() and approval["digest"] == load(work, "plan.json")["digest"], approval
    assert abs(time.time() - datetime.fromisoformat(approval["at"].replace("Z", "+00:00")).timestamp()) < 900, approval
    assert load(work, "state.json")["waves"]["canary"]["status"] == "baking"
    seen["digest"] = approval["digest"]


def fall_back(lab: Lab, host: str) -> None:
    """The device boots its old OS again: its boot env names the old root (resin_root_part), then a
    power cycle (as a device does whose bootloader fell back)."""
    assert lab.state(host).env.get("resin_root_part") == "3", lab.state(host).env  # resin-rootB
    lab.sh(host, "sed -i 's/^resin_root_part=.*/resin_root_part=2/' /mnt/boot/resinOS_uEnv.txt && sync")
    lab.powercut(host)
    lab.poweron(host)
    now = lab.state(host)
    assert (now.version, now.active_root) == (SOURCE, "resin-rootA"), now


def test_a_device_fallen_back_during_the_bake_fails_its_wave_and_a_replan_voids_the_approval(
        lab: Lab, work: Path, seen: dict[str, t.Any]) -> None:
    host, kept = fallen(lab), canaries(lab)[0]
    boot_kept = lab.state(kept).boot_id
    fall_back(lab, host)
    until = load(work, "state.json")["waves"]["canary"]["bake_until"]
    time.sleep(min(max(until - time.time() + 0.5, 0), BAKE + 1))  # bounded: the bake is BAKE seconds
    before = lab.state(main_host(lab))
    result = rollout(lab, work, seen, "recheck", main_failures=1, hup_rollout_action="replan")
    assert result.rc == 0, result.summary()
    rec = record(work, host)
    assert rec["status"] == "failed" and rec["reason"] == f"at the bake re-check: {host}: the device runs {SOURCE} from resin-rootA, not {TARGET}", rec
    assert (rec["os_version"], rec["observed_at"]) == (SOURCE, rec["ended"]), rec
    assert record(work, kept)["status"] == "committed" and record(work, kept)["baked"] is True and lab.state(kept).boot_id == boot_kept
    assert lab.state(host).version == SOURCE, "the re-check changed the fallen device (it is read-only)"
    wave = load(work, "state.json")["waves"]["canary"]
    assert wave["status"] == "baked" and wave["reason"] == "wave canary: 1 done, 1 failed (limit 1), 0 deferred", wave
    (canary,) = [w for w in seen["reports"][-1]["waves"] if w["name"] == "canary"]
    assert canary["counts"]["failed"] == 1 and canary["counts"]["committed"] == 1, canary
    # the spec changed: a new plan, for which the approval given before does not count
    assert load(work, "plan.json")["digest"] != seen["digest"]
    assert "wave main waits for approval: run with -e hup_rollout_approve=main (its approval was for an earlier plan)" in result.stdout
    (waiting,) = [w for w in seen["reports"][-1]["waves"] if w["name"] == "main"]
    assert waiting["decision"] == "waits for approval: run with -e hup_rollout_approve=main (its approval was for an earlier plan)", waiting
    assert load(work, "state.json")["status"] == "waiting"
    untouched(lab, main_host(lab), before)


def test_the_approval_lets_the_rollout_go_on_and_the_plan_matched(lab: Lab, work: Path, seen: dict[str, t.Any]) -> None:
    result = rollout(lab, work, seen, "approved", main_failures=1, hup_rollout_approve="main")
    assert result.rc == 0, result.summary()
    approval = load(work, "approvals.json")["main"]
    assert approval["digest"] == load(work, "plan.json")["digest"] != seen["digest"] and approval["by"] == getpass.getuser(), approval
    now = lab.state(main_host(lab))
    assert record(work, main_host(lab))["status"] == "committed" and now.version == TARGET and now.committed, now
    assert load(work, "state.json")["status"] == "done"
    assert "rollout g1 to 2.113.0: done (every wave passed)" in result.stdout
    # what the runs did is what the plan said: the records' wave and method, the reports' source
    # and bytes (hostapp-update's pull, which the fetch step does not make)
    sources = {d["name"]: (d["source"], d["bytes"]) for r in seen["reports"] for d in r["devices"] if d.get("source")}
    did = {h: {"wave": record(work, h)["wave"], "method": record(work, h)["method"], "source": sources.get(h, (None,))[0],
               "bytes": sources.get(h, (None, None))[1]} for h in lab.hosts}
    assert did == {h: {k: v for k, v in p.items() if k != "rule"} for h, p in seen["plan"].items()}, (did, seen["plan"])
    # the fleet inventory groups the devices by the version the rollout last saw them run
    fleet = yaml.safe_load(lab.inventory.with_name("lab.fleet.yml").read_text())
    fleet["os_version_from"] = [str(state(work))]
    path = work / "versions.fleet.yml"
    path.write_text(yaml.safe_dump(fleet))
    proc = subprocess.run([str(VENV_BIN / "ansible-inventory"), "-i", str(path), "--list"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "ANSIBLE_COLLECTIONS_PATH": collections_path(), "ANSIBLE_INVENTORY_UNPARSED_FAILED": "1"},
                          check=False)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    groups = {name: sorted(value.get("hosts", [])) for name, value in data.items() if name.startswith("os_")}
    assert groups == {"os_2_113_0": sorted([canaries(lab)[0], main_host(lab)]), "os_2_88_4": [fallen(lab)]}, groups
    where = data["_meta"]["hostvars"][fallen(lab)]["fleet_os_version_record"]
    assert (where.get("__ansible_unsafe") if isinstance(where, dict) else where) == str(state(work) / f"devices/{fallen(lab)}.json"), where

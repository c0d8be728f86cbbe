# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The standard role's rescue (plugin_utils.rescue, filter osfleet.hup.hup_rescue): what it does
after a failed step and how it words the device's state, from what the device says. The wiring in
roles/standard/tasks/update.yml (its _rescue, _locked and _switched) in a real ansible-playbook run
on localhost, no device."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import typing as t
from pathlib import Path

import pytest
import yaml
from ansible.errors import AnsibleFilterError

from ansible_collections.osfleet.hup.plugins.filter.rescue import FilterModule, hup_rescue
from ansible_collections.osfleet.hup.plugins.plugin_utils.rescue import decide_rescue

REPO = Path(__file__).resolve().parents[4]
VENV_BIN = Path(sys.executable).parent
OLD, NEW = "2.88.4", "2.113.0"
RUN_ID = "r-1"
SKIPPED = {"skipped": True, "changed": False}
UNREACHABLE = {"failed": True, "changed": False, "reason": "the device was unreachable: Connection refused"}


def env(root: int, upgrade: bool) -> dict[str, t.Any]:
    return {"resin_root_part": root, "upgrade_available": upgrade, "bootcount": 0, "bootcount_limit": 3}


def device(root: str = "A", *, boot: str = "boot-1", version: str = OLD, armed_for: int | None = None, pending: bool = False) -> dict[str, t.Any]:
    """A device's facts (device_info): booted root ``root``; env armed for ``armed_for``, else for the booted
    root (``pending``: armed and booted, not committed)."""
    active, inactive = (2, 3) if root == "A" else (3, 2)
    other = "B" if root == "A" else "A"
    boot_env = env(armed_for, True) if armed_for else env(active, pending)
    return {"version": version, "active_root": f"resin-root{root}", "active_index": active, "inactive_root": f"resin-root{other}",
            "inactive_index": inactive, "inactive_version": NEW if root == "A" else OLD, "boot_id": boot, "hostapp": True,
            "boot_env": boot_env, "update_pending": bool(armed_for) or pending}


BEFORE = device()


def facts(step: str, *, read: dict[str, t.Any] | None = None, switched: bool = False, writer: str = "hostapp", acted: bool = True,
          **more: t.Any) -> dict[str, t.Any]:
    data: dict[str, t.Any] = {"locked": True, "switched": switched, "phase": "needed", "target": NEW, "run_id": RUN_ID,
                              "failure": {"step": step, "msg": "x", "rolled_back": False, "rollback_reason": "", "watchdog_fired": "",
                                          "acted": acted},
                              "before": BEFORE, "writer": writer, "read": read if read is not None else {}}
    data.update(more)
    return data


def read_ok(dev: dict[str, t.Any]) -> dict[str, t.Any]:
    return {"changed": False, "device": dev}


def test_the_filter_is_named() -> None:
    assert list(FilterModule().filters()) == ["hup_rescue"]


def test_bad_input_is_named() -> None:
    with pytest.raises(AnsibleFilterError, match="the input must be a mapping"):
        hup_rescue(["x"])


def test_a_power_cut_after_the_hooks_armed_reports_the_new_os_and_puts_nothing_back() -> None:
    """The defect: rootfs on a balenaOS device failed (the power cut after hostapp-update's hooks
    armed the new OS, before the controller had the result); the device came back on the new OS.
    Before: 'nothing switched, the device stays on 2.88.4', and bootenv rolled_back ran on it."""
    booted = device("B", boot="boot-2", version=NEW, pending=True)
    decided = decide_rescue(facts("rootfs", read=read_ok(booted)))
    assert decided["read"] and decided["booted_other_root"]
    assert not decided["restore"] and not decided["disarm"], decided
    assert decided["state"] == (f"the device rebooted during the run and runs {NEW} from resin-rootB (it ran {OLD} from resin-rootA), not committed: "
                                f"its rollback-health watches it; run again with the same run id (hup_run_id={RUN_ID}) to verify and commit it")
    assert "nothing switched" not in decided["state"]
    assert decided["outcome"] == "interrupted"


def test_a_new_os_its_rollback_health_committed_meanwhile_is_reported_committed() -> None:
    booted = device("B", boot="boot-2", version=NEW)
    decided = decide_rescue(facts("rootfs", read=read_ok(booted)))
    assert not decided["restore"]
    assert decided["state"].endswith(f"runs {NEW} from resin-rootB (it ran {OLD} from resin-rootA), committed; run again with the same run id "
                                     f"(hup_run_id={RUN_ID}) to finish the update"), decided["state"]
    assert decided["outcome"] == "interrupted"


def test_a_plain_ab_device_that_booted_what_its_arm_wrote_is_not_rolled_back_by_the_rescue() -> None:
    """A power cut in bootenv armed on an A/B device after the env was written: bootenv rolled_back
    would roll the booted new OS back (plan_rollback to the inactive root), saying 'nothing switched'."""
    booted = dict(device("B", boot="boot-2", version=NEW, pending=True), hostapp=False)
    decided = decide_rescue(facts("bootenv armed", read=read_ok(booted), writer="export"))
    assert not decided["restore"] and decided["booted_other_root"]
    assert f"runs {NEW} from resin-rootB" in decided["state"] and decided["outcome"] == "interrupted"


def test_an_unreadable_device_after_the_rootfs_step_may_boot_either_os() -> None:
    decided = decide_rescue(facts("rootfs", read=UNREACHABLE, restore=UNREACHABLE))
    assert decided["restore"], "tried, as before (the step probes and decides; it cannot reach the device either)"
    assert decided["state"] == (f"the device could not be read after the failure: hostapp-update's hooks may have armed {NEW} before the "
                                f"controller heard back, so at its next boot it runs {NEW} (its rollback-health watching it) or stays on "
                                f"{OLD}; run again with the same run id (hup_run_id={RUN_ID}) once it answers")
    assert decided["outcome"] == "failed"


@pytest.mark.parametrize(("step", "writer"), [("fetch", "hostapp"), ("supervisor stopped", "hostapp"), ("rootfs", "export"),
                                              ("bootfiles", "export"), ("bootenv armed", "hostapp")])
def test_an_unreadable_device_after_a_step_that_arms_nothing_stays_on_the_old_os(step: str, writer: str) -> None:
    decided = decide_rescue(facts(step, read=UNREACHABLE, writer=writer))
    assert decided["state"] == f"nothing switched, the device stays on {OLD}"
    assert decided["restore"] and decided["outcome"] == "failed"


def test_an_unreadable_device_after_a_rootfs_step_that_had_not_started_hostapp_update_stays_on_the_old_os() -> None:
    """The power cut before the rootfs step reached the device (its first probe refused): its
    result has no ``acted``, so nothing ran that could arm; the role passes the string 'False'."""
    for acted in (False, "False"):
        decided = decide_rescue(facts("rootfs", read=UNREACHABLE, acted=acted))  # type: ignore[arg-type]
        assert decided["state"] == f"nothing switched, the device stays on {OLD}", decided
    assert "may have armed" in decide_rescue(facts("rootfs", read=UNREACHABLE, acted="True"))["state"]  # type: ignore[arg-type]


def test_an_unreadable_ab_device_after_its_arm_may_boot_either_os() -> None:
    decided = decide_rescue(facts("bootenv armed", read=UNREACHABLE, writer="export"))
    assert decided["state"].startswith(f"the device could not be read after the failure: the step may have armed {NEW}"), decided["state"]


def test_the_writer_falls_back_to_the_preflights_device() -> None:
    decided = decide_rescue(facts("rootfs", read=UNREACHABLE, writer=""))
    assert "hostapp-update's hooks may have armed" in decided["state"]
    decided = decide_rescue(facts("rootfs", read=UNREACHABLE, writer="", before=dict(BEFORE, hostapp=False)))
    assert decided["state"] == f"nothing switched, the device stays on {OLD}"


def test_the_same_boot_armed_by_the_hooks_is_put_back() -> None:
    """A link lost in the rootfs step after the hooks armed, no reboot: the rescue puts the old env back."""
    armed = device(boot="boot-1", armed_for=3)
    decided = decide_rescue(facts("rootfs", read=read_ok(armed)))
    assert decided["restore"] and not decided["booted_other_root"]
    restored = decide_rescue(facts("rootfs", read=read_ok(armed), restore={"changed": True}))
    assert restored["state"] == f"nothing switched, the device stays on {OLD}"
    failed = decide_rescue(facts("rootfs", read=read_ok(armed), restore={"failed": True, "reason": "hooks failed"}))
    assert failed["state"] == (f"the bootloader is armed for resin-rootB ({NEW}) and the rescue could not put the old OS's env back: the "
                               f"device boots {NEW} at its next reboot, its rollback-altboot protecting it")


def test_a_reboot_onto_the_old_root_is_put_back_and_stays_on_it() -> None:
    rebooted = device(boot="boot-2")
    decided = decide_rescue(facts("rootfs", read=read_ok(rebooted)))
    assert decided["restore"] and not decided["booted_other_root"]
    assert decided["state"] == f"nothing switched, the device stays on {OLD}" and decided["outcome"] == "failed"


def test_the_disarm_needs_the_same_boot() -> None:
    armed = device(boot="boot-1", armed_for=3)
    assert decide_rescue(facts("reboot", switched=True, read=read_ok(armed)))["disarm"]
    assert not decide_rescue(facts("reboot", switched=True, read=read_ok(dict(armed, boot_id="boot-2"))))["disarm"]
    assert not decide_rescue(facts("reboot", switched=True, read=UNREACHABLE))["disarm"]
    assert not decide_rescue(facts("reboot", switched=True, read=read_ok(armed), phase="pending_commit"))["disarm"]
    assert not decide_rescue(facts("reboot", switched=False, read=read_ok(armed)))["disarm"]


@pytest.mark.parametrize(("more", "state", "outcome"), [
    ({"failure": {"step": "health", "rolled_back": True, "rollback_reason": "altboot"}}, f"rolled back (altboot), the device runs {OLD} again",
     "rolled_back"),
    ({"switched": True, "disarm": {"changed": True}}, f"the switch was disarmed before the reboot, the device stays on {OLD}", "failed"),
    ({"switched": True, "watchdog": "put the env and boot files back for the running OS; started the supervisor"},
     f"the switch was disarmed before the reboot (by the device's watchdog), the device stays on {OLD}", "interrupted"),
    ({"switched": True, "health_committed": True}, f"the device runs {NEW}, committed", "failed"),
    ({"phase": "supervisor_behind", "switched": True}, f"the device runs {NEW}, committed", "failed"),
    ({"switched": True, "read": UNREACHABLE}, "the bootloader is armed for the new OS, its rollback-altboot protects it", "failed"),
    ({"read": SKIPPED}, f"nothing switched, the device stays on {OLD}", "failed"),
    ({"before": {}}, "nothing switched, the device stays on its old OS", "failed"),
])
def test_the_other_states_are_worded_as_before(more: dict[str, t.Any], state: str, outcome: str) -> None:
    data = facts("supervisor updated", **more)
    if "failure" in more:
        data["failure"] = {"msg": "x", **more["failure"]}
    decided = decide_rescue(data)
    assert (decided["state"], decided["outcome"]) == (state, outcome)


def test_without_the_lock_the_rescue_reads_and_restores_nothing() -> None:
    decided = decide_rescue(facts("lock", locked=False))
    assert not (decided["read"] or decided["restore"] or decided["disarm"])
    assert not decide_rescue(facts("health", failure={"step": "health", "rolled_back": True}))["read"]


def test_a_read_the_watchdog_refused_words_no_guess() -> None:
    """The device's watchdog gave the run up and put the env back: not 'could not be read'."""
    refused = {"failed": True, "watchdog_fired": "put the env and boot files back for the running OS"}
    decided = decide_rescue(facts("rootfs", read=refused, watchdog=refused["watchdog_fired"]))
    assert decided["state"] == f"nothing switched, the device stays on {OLD}" and decided["outcome"] == "interrupted"


# -- the role's wiring (roles/standard/tasks/update.yml), in ansible-playbook on localhost

def _role_vars() -> dict[str, str]:
    """The block vars of the role's 'Update the host OS' (_locked, _switched, _rescue)."""
    tasks = yaml.safe_load((REPO / "roles" / "standard" / "tasks" / "update.yml").read_text())
    block = next(t for t in tasks if "block" in t)["block"]
    update = next(t for t in block if t.get("name") == "Update the host OS")
    return {k: update["vars"][k] for k in ("_locked", "_switched", "_rescue")}


PLAY = """
- name: The rescue's decisions, as the role templates them
  hosts: localhost
  gather_facts: false
  vars: %(vars)s
  tasks:
    - name: What the run registered
      ansible.builtin.set_fact:
        hup_preflight: %(preflight)s
        hup_lock_taken: {changed: true}
        hup_fetch: {changed: false, writer: hostapp}
        hup_rootfs: {failed: true, changed: false, reason: "the device was unreachable: Connection closed"}
        hup_failure: {step: rootfs, msg: "the device was unreachable: Connection closed", rolled_back: false, rollback_reason: "", watchdog_fired: "",
                      acted: "True"}

    - name: Before the read
      ansible.builtin.debug:
        msg: "BEFORE {{ _rescue | to_json }}"

    - name: What the rescue's read found
      ansible.builtin.set_fact:
        hup_rescue_device: {changed: false, device: %(booted)s}
        hup_rescue_bootenv: {skipped: true, changed: false}

    - name: After the read
      ansible.builtin.debug:
        msg: "AFTER {{ _rescue | to_json }}"
"""


def test_the_role_templates_the_rescue_from_its_registered_results(tmp_path: Path) -> None:
    booted = device("B", boot="boot-2", version=NEW, pending=True)
    play = PLAY % {"vars": json.dumps(_role_vars()), "preflight": json.dumps({"phase": "needed", "device": BEFORE}), "booted": json.dumps(booted)}
    (tmp_path / "play.yml").write_text(play)
    extra = {"hup_target_version": NEW, "hup_run_id_effective": RUN_ID}
    run_env = {**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_LOCALHOST_WARNING": "0", "ANSIBLE_STDOUT_CALLBACK": "default"}
    proc = subprocess.run([str(VENV_BIN / "ansible-playbook"), "-i", "localhost,", "-c", "local", str(tmp_path / "play.yml"), "-e", json.dumps(extra)],
                          capture_output=True, text=True, env=run_env, cwd=tmp_path, timeout=120, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    decided = {}
    for line in out.splitlines():
        for tag in ("BEFORE", "AFTER"):
            if f'"msg": "{tag} ' in line:
                decided[tag] = json.loads(json.loads("{" + line.strip().rstrip(",") + "}")["msg"][len(tag) + 1:])
    assert set(decided) == {"BEFORE", "AFTER"}, out[-3000:]
    # before the read: not switched (the rootfs step failed), the device to be read, the old env to be put back
    assert (decided["BEFORE"]["read"], decided["BEFORE"]["restore"], decided["BEFORE"]["disarm"]) == (True, True, False), decided
    assert decided["BEFORE"]["state"].startswith("the device could not be read after the failure: hostapp-update's hooks may have armed")
    # after it: the device booted the new OS; nothing to put back, and the message says what runs
    assert (decided["AFTER"]["restore"], decided["AFTER"]["outcome"]) == (False, "interrupted"), decided
    assert decided["AFTER"]["state"].startswith(f"the device rebooted during the run and runs {NEW} from resin-rootB"), decided

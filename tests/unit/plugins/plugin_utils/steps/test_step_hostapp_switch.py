# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The switch steps on a balenaOS (hostapp) device (plugin_utils/hooks.py and the hostapp branches of
steps/bootfiles.py, bootenv.py, health.py): the new OS's hostapp-update hooks did the switch, so
bootfiles and bootenv armed verify and never write; rolled_back runs the running OS's hooks;
health never commits while the device's rollback-health is armed. On the model device
(switch_model.Model with ``hostapp=True`` and its ``run_hooks``)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from switch_model import DIGEST_NEW, Model, bootenv_plan, bootfiles_plan

from ansible_collections.osfleet.hup.plugins.plugin_utils import hooks
from ansible_collections.osfleet.hup.plugins.plugin_utils.errors import NotStaged, PlanError
from ansible_collections.osfleet.hup.plugins.plugin_utils.markers import (
    ALTBOOT_BREADCRUMB,
    HEALTH_BREADCRUMB,
    HEALTH_VARIABLES_FILE,
    ROLLBACK_MARKER,
)
from ansible_collections.osfleet.hup.plugins.plugin_utils.steps.bootenv import current_boot_state, plan_after_previous_hooks
from ansible_collections.osfleet.hup.plugins.plugin_utils.steps.health import READY, WAIT, classify_health, health_preview

HOOKS_DID_NOT = "wrote nothing (on a balenaOS device the hooks do the switch, the collection only verifies it)"


def hostapp_device(*, record: bool = True) -> Model:
    """A balenaOS device on 2.88.4: the lock step recorded its keep-back files (``record``), then
    hostapp-update wrote 2.113.0 to the inactive partition and ran the new OS's hooks."""
    model = Model.fresh(hostapp=True)
    if record:
        model.record_keepback()
    model.run_hooks(1)
    return model


def snapshot(model: Model) -> tuple[dict[str, str], dict[str, str]]:
    return dict(model.boot), dict(model.state)


# --- the record of the keep-back files -----------------------------------------------------------

def test_keepback_record_covers_the_kept_back_files_not_the_env():
    patterns = hooks.keepback_patterns(("my/",))
    assert "config.json" in patterns and "config.txt" in patterns and "extra_uEnv.txt" in patterns and "my/" in patterns
    assert not {"resinOS_uEnv.txt", "bootcount.env", "grub/grubenv", "bootenv"} & set(patterns)


def test_parse_record():
    line = f"{'a' * 64}  ./config.json\n{'b' * 64}  ./splash/balena-logo.png\n"
    assert hooks.parse_record(line) == {"config.json": "a" * 64, "splash/balena-logo.png": "b" * 64}
    assert hooks.parse_record("") == {}
    assert hooks.parse_record(None) is None
    assert hooks.parse_record("garbage\n") is None, "an unreadable record is no record"


@pytest.mark.parametrize("hostapp, armed_for_inactive, want", [(True, False, True), (True, True, False), (False, False, False)])
def test_the_lock_step_records_only_before_the_hooks_switched(hostapp, armed_for_inactive, want):
    model = Model.fresh(hostapp=hostapp)
    if armed_for_inactive:
        model.run_hooks(1)
    assert hooks.should_record(model.dev()) is want


# --- bootfiles -------------------------------------------------------------------------------------

def test_bootfiles_verifies_the_hooks_copy_and_writes_nothing():
    model = hostapp_device()
    plan = bootfiles_plan(*model.both())
    assert not plan.changed and plan.ops == [] and plan.diff is None
    assert plan.msg.startswith("verified the boot files of 2.113.0 on /mnt/boot: the new OS's hostapp-update hooks copied them")
    assert "bzImage" in plan.data["unchanged"] and "overlays/b.dtbo" in plan.data["unchanged"]
    assert {"config.txt", "splash/balena-logo.png", "extra_uEnv.txt"} <= set(plan.data["kept_back"])
    assert plan.data["copied"] == [] and plan.data["release"]["version"] == "2.113.0"
    assert "no record" not in plan.actions[0]


def test_bootfiles_without_a_record_says_it_did_not_compare_the_keep_back_files():
    plan = bootfiles_plan(*hostapp_device(record=False).both())
    assert not plan.changed and "no record of the keep-back files from before the update" in plan.actions[0]


@pytest.mark.parametrize("name, damage", [("config.txt", "changed"), ("config.json", "removed"), ("splash/balena-logo.png", "changed")])
def test_bootfiles_fails_when_a_keep_back_file_changed(name, damage):
    model = hostapp_device()
    if damage == "removed":
        del model.boot[name]
    else:
        model.boot[name] = model.inactive_payload.get(name, "overwritten")
    with pytest.raises(PlanError) as exc:
        bootfiles_plan(*model.both())
    found = "is gone" if damage == "removed" else "has other contents than before the update"
    assert f"but on /mnt/boot the keep-back file {name} {found}" in str(exc.value), exc.value
    assert str(exc.value).startswith("the new OS's hostapp-update hooks were to copy") and str(exc.value).endswith(HOOKS_DID_NOT)


def test_bootfiles_keep_back_failure_says_what_the_hooks_were_to_do_and_what_was_found():
    """The message pinned: the file, what the new OS's hooks were to do (copy the new OS's boot
    files, leaving the keep-back files as they were), what was found, and that nothing was written
    (the action puts the device's inventory name before it)."""
    model = hostapp_device()
    model.boot["config.txt"] = "# a hook that ignored the keep-back list\n"
    with pytest.raises(PlanError) as exc:
        bootfiles_plan(*model.both())
    assert str(exc.value) == (
        "the new OS's hostapp-update hooks were to copy /resin-boot of 2.113.0 (the inactive hostapp on resin-rootB) to /mnt/boot, "
        "leaving the keep-back files as they were, but on /mnt/boot the keep-back file config.txt has other contents than before "
        "the update (against the sha256 that osfleet.hup.lock recorded in /mnt/state/osfleet/keepback-before.sha256); "
        "osfleet.hup.bootfiles wrote nothing (on a balenaOS device the hooks do the switch, the collection only verifies it)")
    del model.boot["config.json"]
    model.boot["splash/balena-logo.png"] = "another logo"
    with pytest.raises(PlanError) as exc:
        bootfiles_plan(*model.both())
    assert ("but on /mnt/boot the keep-back files config.txt, splash/balena-logo.png have other contents than before the update and "
            "the keep-back file config.json is gone (against the sha256 that osfleet.hup.lock recorded in ") in str(exc.value), exc.value


def test_bootfiles_fails_when_the_hooks_did_not_copy_a_file():
    model = hostapp_device()
    model.boot["bzImage"] = "kernel 2.88.4"
    del model.boot["overlays/b.dtbo"]
    with pytest.raises(PlanError) as exc:
        bootfiles_plan(*model.both())
    msg = str(exc.value)
    assert "/mnt/boot lacks the new OS (2.113.0, the inactive hostapp on resin-rootB)'s overlays/b.dtbo" in msg
    assert "holds other contents than the new OS (2.113.0, the inactive hostapp on resin-rootB) for bzImage" in msg
    assert msg.endswith(HOOKS_DID_NOT)


def test_bootfiles_fails_when_the_inactive_hostapp_cannot_be_read():
    model = hostapp_device()
    raw = model.switch_raw()
    raw.update(inactive_present="0", inactive_sha="", inactive_size="", inactive_md5="", inactive_mount="could not unmount /x")
    from ansible_collections.osfleet.hup.plugins.plugin_utils.switchprobe import parse_switch_probe  # pylint: disable=import-outside-toplevel
    with pytest.raises(PlanError, match=r"'s /resin-boot could not be read; could not unmount /x; osfleet.hup.bootfiles wrote nothing"):
        bootfiles_plan(model.dev(), parse_switch_probe(raw))


def test_bootfiles_not_staged():
    model = hostapp_device()
    model.inactive_stamp = {}
    with pytest.raises(NotStaged):
        bootfiles_plan(*model.both())
    plan = bootfiles_plan(*model.both(), assume_staged=True)
    assert not plan.changed and "hostapp-update hooks copy once osfleet.hup.rootfs has run hostapp-update" in plan.actions[0]


def test_an_ab_device_still_gets_its_boot_files_copied():
    model = Model.fresh()
    plan = bootfiles_plan(*model.both())
    assert plan.changed and any(op[0] == "copy" for op in plan.ops)


# --- bootenv armed -----------------------------------------------------------------------------------

def test_armed_verifies_the_hooks_switch_and_writes_nothing():
    model = hostapp_device()
    plan = bootenv_plan(*model.both(), state="armed", expected_digest=DIGEST_NEW)
    assert not plan.changed and plan.ops == []
    assert plan.msg == ("verified the switch to resin-rootB (2.113.0): the new OS's hostapp-update hooks armed the bootloader env "
                        "(resin_root_part=3, upgrade_available=1) and wrote the rollback breadcrumbs")
    assert plan.data["boot_env"]["root"] == "resin-rootB" and plan.data["boot_env"]["upgrade_available"]


@pytest.mark.parametrize("damage, expect", [
    (lambda m: m.boot.update({"resinOS_uEnv.txt": "resin_root_part=3\nupgrade_available=0\n"}), "the bootloader env is not armed (upgrade_available=0)"),
    (lambda m: m.boot.update({"resinOS_uEnv.txt": "resin_root_part=2\nupgrade_available=1\n"}),
     "the bootloader env names resin-rootA, not the new root resin-rootB"),
    (lambda m: m.state.pop(HEALTH_BREADCRUMB), "missing /mnt/state/rollback-health-breadcrumb"),
    (lambda m: (m.state.pop(ALTBOOT_BREADCRUMB), m.state.pop(HEALTH_VARIABLES_FILE)),
     "missing /mnt/state/rollback-altboot-breadcrumb, /mnt/state/rollback-health-variables"),
    (lambda m: m.boot.update({"bootcount.env": "bootcount=2\n"}), "the boot counter is 2, not reset"),
    (lambda m: m.boot.update({"config.txt": "the OS's config"}), "the keep-back file config.txt has other contents than before the update"),
])
def test_armed_fails_naming_what_the_hooks_did_not_do(damage, expect):
    model = hostapp_device()
    damage(model)
    before = snapshot(model)
    with pytest.raises(PlanError) as exc:
        bootenv_plan(*model.both(), state="armed")
    assert expect in str(exc.value) and str(exc.value).endswith(HOOKS_DID_NOT)
    assert str(exc.value).startswith("the new OS's hostapp-update hooks were to arm the bootloader env for the new root resin-rootB, write the "
                                     "rollback breadcrumbs and copy /resin-boot of 2.113.0 (the inactive hostapp on resin-rootB) to /mnt/boot, "
                                     "leaving the keep-back files as they were, but "), exc.value
    assert snapshot(model) == before


def test_armed_when_the_device_already_booted_the_target():
    model = hostapp_device()
    model.reboot()
    plan = bootenv_plan(*model.both(), state="armed", expected_digest=DIGEST_NEW)
    assert not plan.changed and "already booted the target" in plan.msg


# --- bootenv rolled_back -------------------------------------------------------------------------------

def test_rolled_back_runs_the_running_os_hooks():
    model = hostapp_device()
    plan = bootenv_plan(*model.both(), state="rolled_back", now="2026-12-03T00:00:00Z")
    assert plan.changed and plan.pending == hooks.CURRENT_HOOKS
    assert [op[1] for op in plan.ops] == [f"/mnt/state/{ROLLBACK_MARKER}"], "nothing but the record: the hooks do the rest"
    assert "with its own hooks (DURING_UPDATE=0 hostapp-update-hooks)" in plan.actions[0]
    assert "bzImage" in plan.data["restored"] and plan.data["rollback_to"] == {"root": "resin-rootA", "version": "2.88.4"}
    assert plan.data["boot_env"]["root"] == "resin-rootA" and not plan.data["boot_env"]["upgrade_available"]
    assert "+upgrade_available=0" not in plan.diff["before"] and "upgrade_available=0" in plan.diff["after"]
    # what the action does: the hooks, then the record; the decision is then empty
    model.run_hooks(0)
    model.apply(plan.ops)
    assert json.loads(model.state[ROLLBACK_MARKER])["reason"] == "requested"
    again = bootenv_plan(*model.both(), state="rolled_back")
    assert not again.changed and again.ops == []
    assert model.env()["resin_root_part"] == "2" and model.env()["upgrade_available"] == "0"


def test_rolled_back_with_nothing_to_put_back():
    model = Model.fresh(hostapp=True)
    plan = bootenv_plan(*model.both(), state="rolled_back")
    assert not plan.changed and plan.ops == [] and not plan.pending


def test_rolled_back_leaves_the_rollback_of_a_booted_new_os_to_rollback_health():
    model = hostapp_device()
    model.reboot()
    with pytest.raises(PlanError, match="the rollback to the previous OS is the device's rollback-health's"):
        bootenv_plan(*model.both(), state="rolled_back")


def test_rolled_back_when_a_rollback_waits_for_its_reboot():
    model = hostapp_device()
    model.reboot()
    # rollback-health ran the old OS's hooks: the env names the old root, not armed
    model.boot["resinOS_uEnv.txt"] = "resin_root_part=2\nupgrade_available=0\n"
    plan = bootenv_plan(*model.both(), state="rolled_back")
    assert not plan.changed and "waits for its reboot" in plan.msg


# --- health ----------------------------------------------------------------------------------------------

def booted(model: Model) -> Model:
    model.reboot()
    return model


def classify(model: Model):
    dev, probe = model.both(listed=False)
    return classify_health(dev, probe, current_boot_state(dev)[0], "2.113.0")


@pytest.mark.parametrize("running", [True, False])
def test_health_waits_for_the_devices_rollback_health_and_never_gives_up_for_a_commit_of_its_own(running):
    model = booted(hostapp_device())
    if running:
        model.services["rollback-health"] = "active"
        model.rollback_health_state = "testing"
    view = classify(model)
    assert view.kind == WAIT and view.device_commits and not view.proceed_on_timeout
    assert "the device's rollback-health has not committed the update" in view.msg
    assert ("rollback-health: testing" if running else "rollback-health: not running") in view.msg
    assert "the step does not commit by itself" in view.msg


def test_health_ready_once_the_device_committed():
    model = booted(hostapp_device())
    model.run_hooks(0)  # rollback-stop + the commit hooks: env at the running root, not armed, no breadcrumbs
    view = classify(model)
    assert view.kind == READY and view.committed


def test_health_commits_itself_without_the_devices_commit_machinery():
    model = booted(hostapp_device())
    for name in (HEALTH_BREADCRUMB, ALTBOOT_BREADCRUMB):
        del model.state[name]
    view = classify(model)
    assert view.kind == READY and not view.committed


def test_health_on_an_ab_device_still_proceeds_at_the_timeout():
    model = booted(hostapp_device())
    model.hostapp = False
    model.services["rollback-health"] = "active"
    model.rollback_health_state = "testing"
    view = classify(model)
    assert view.kind == WAIT and view.proceed_on_timeout and not view.device_commits


def test_health_preview_on_a_hostapp_device_never_commits():
    model = booted(hostapp_device())
    changed, actions = health_preview(classify(model), "2.113.0", commands=0, commit=True, rollback=True, device_timeout=60, hostapp=True)
    assert not changed
    assert any("waited for the device's rollback-health to check and commit the update" in a for a in actions)
    assert any("failed if rollback-health had not committed it within the device_timeout (60 s)" in a for a in actions)
    assert not any("committed it (rollback-stop)" in a for a in actions)


# --- the step's own commit runs the commit hooks ------------------------------------------------------------

def _not_committed_without_breadcrumbs(hostapp: bool = True) -> Model:
    model = booted(hostapp_device())
    model.hostapp = hostapp
    for name in (HEALTH_BREADCRUMB, ALTBOOT_BREADCRUMB):
        del model.state[name]
    return model


def test_a_commit_on_a_hostapp_device_runs_the_commit_hooks_after_rollback_stop():
    model = _not_committed_without_breadcrumbs()
    plan = bootenv_plan(*model.both(listed=False), state="committed")
    assert plan.changed and plan.actions[-1] == hooks.COMMIT_HOOKS_ACTION, plan.actions
    assert plan.actions[0].startswith("set the bootloader env: upgrade_available 1 -> 0")
    assert hooks.commit_hooks_due(model.dev(), plan.ops)
    model.apply(plan.ops)
    again = bootenv_plan(*model.both(listed=False), state="committed")
    assert not again.changed and again.actions == [], "a committed device: no commit, no commit hooks"
    assert not hooks.commit_hooks_due(model.dev(), again.ops)


def test_a_commit_on_an_ab_device_runs_no_commit_hooks():
    model = _not_committed_without_breadcrumbs(hostapp=False)
    plan = bootenv_plan(*model.both(listed=False), state="committed")
    assert plan.changed and hooks.COMMIT_HOOKS_ACTION not in plan.actions
    assert not hooks.commit_hooks_due(model.dev(), plan.ops)


def test_health_preview_of_its_own_commit_on_a_hostapp_device_names_the_commit_hooks():
    model = _not_committed_without_breadcrumbs()
    changed, actions = health_preview(classify(model), "2.113.0", commands=0, commit=True, rollback=True, hostapp=True)
    assert changed and actions == ["committed the update (rollback-stop) when the checks passed, "
                                   "then ran the running OS's commit hooks (hostapp-update-hooks-v2 --commit)"]
    changed, actions = health_preview(classify(model), "2.113.0", commands=0, commit=True, rollback=True, hostapp=False)
    assert changed and actions == ["committed the update (rollback-stop) when the checks passed"]


LAB_RUNNER = Path(__file__).resolve().parents[5] / "tests/lab/osfleet_lab/os/rootfs/usr/bin/hostapp-update-hooks-v2"


def _lab_runner_output(tmp_path: Path, hooks_: dict[str, str]) -> tuple[int, str]:
    """The lab's hostapp-update-hooks-v2 --commit over a hooks dir of ``hooks_`` (path: body)."""
    for rel, body in hooks_.items():
        f = tmp_path / "hooks" / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text("#!/bin/sh\n" + body + "\n")
        f.chmod(0o755)
    res = subprocess.run(["sh", str(LAB_RUNNER), "--commit", "-d", str(tmp_path / "hooks")], capture_output=True, text=True, check=False,
                         cwd=tmp_path)
    return res.returncode, res.stdout + res.stderr


def test_a_failing_commit_hook_is_reported_and_the_others_ran(tmp_path):
    rc, output = _lab_runner_output(tmp_path, {
        "10-a/10-fwd_commit_a": f"touch {tmp_path}/a-ran; exit 4",
        "20-b/20-fwd_commit_b": f"touch {tmp_path}/b-ran",
        "30-c/30-forward_c": f"touch {tmp_path}/forward-ran",
    })
    assert rc == 0 and (tmp_path / "a-ran").exists() and (tmp_path / "b-ran").exists() and not (tmp_path / "forward-ran").exists()
    report = hooks.commit_hooks_report({"tool": "hostapp-update-hooks-v2", "rc": rc, "output": output})
    assert report.failed == ("10-a/10-fwd_commit_a",) and not report.ok
    (action,) = report.actions()
    assert action == ("ran the running OS's commit hooks (hostapp-update-hooks-v2 --commit): the commit hook(s) 10-a/10-fwd_commit_a failed; "
                      "the runner went on with the others (the update stays committed)")
    assert hooks.commit_hooks_msg(report).startswith("committed, but the running OS's commit hooks")
    assert report.as_dict()["failed"] == ["10-a/10-fwd_commit_a"]


def test_commit_hooks_report_of_a_clean_run_a_failed_runner_and_no_runner(tmp_path):
    rc, output = _lab_runner_output(tmp_path, {"10-a/10-fwd_commit_a": "true"})
    clean = hooks.commit_hooks_report({"tool": "hostapp-update-hooks", "rc": rc, "output": output})
    assert clean.ok and clean.actions() == ["ran the running OS's commit hooks (hostapp-update-hooks --commit)"]
    assert hooks.commit_hooks_msg(clean) == ""
    broken = hooks.commit_hooks_report({"tool": "hostapp-update-hooks-v2", "rc": 1, "output": "hostapp-update-hooks: no /x\n"})
    assert not broken.ok and broken.actions()[0].endswith("the runner failed (exit 1): hostapp-update-hooks: no /x")
    none = hooks.commit_hooks_report({"tool": None, "rc": None, "output": ""})
    assert not none.ok and "no commit hooks ran" in none.actions()[0]


def test_run_commit_hooks_puts_the_report_in_place_of_the_planned_action():
    class Session:
        def run_json(self, script, what=None):
            assert script == "commit_hooks"
            return {"tool": "hostapp-update-hooks-v2", "rc": 0, "output": "hostapp-update-hooks: running 10-a/10-fwd_commit_a (DURING_UPDATE=0)\n"}

    actions = ["set the bootloader env: upgrade_available 1 -> 0", hooks.COMMIT_HOOKS_ACTION, "removed x"]
    report = hooks.run_commit_hooks(Session(), actions)
    assert report.ok and actions == ["set the bootloader env: upgrade_available 1 -> 0",
                                     "ran the running OS's commit hooks (hostapp-update-hooks-v2 --commit)", "removed x"]


# --- health's rollback after the previous OS's hooks ----------------------------------------------------

def test_the_rollback_after_the_previous_os_hooks_is_rollback_stop_and_the_record():
    model = booted(hostapp_device())
    model.run_hooks(0)  # the device committed
    model.run_hooks(1)  # the previous OS's hooks (chrooted in the inactive hostapp): its files, env armed for it
    plan = plan_after_previous_hooks(*model.both(listed=False), reason="checks", now="2026-12-03T00:00:00Z")
    assert plan.changed and plan.actions[0].startswith("ran the previous OS's hooks")
    assert plan.data["rollback_to"] == {"root": "resin-rootA", "version": "2.88.4"}
    model.apply(plan.ops)
    assert model.env() == {"resin_root_part": "2", "upgrade_available": "0"}
    assert not {HEALTH_BREADCRUMB, ALTBOOT_BREADCRUMB, HEALTH_VARIABLES_FILE} & set(model.state)
    marker = json.loads(model.state[ROLLBACK_MARKER])
    assert (marker["reason"], marker["from_version"], marker["to_root"]) == ("checks", "2.113.0", "resin-rootA")
    model.reboot()
    assert (model.version, model.active) == ("2.88.4", "resin-rootA")


def test_the_rollback_refuses_an_env_the_previous_os_hooks_did_not_point_back():
    model = booted(hostapp_device())
    model.run_hooks(0)
    before = snapshot(model)
    with pytest.raises(PlanError, match="the previous OS's hooks did not point the bootloader env at resin-rootA"):
        plan_after_previous_hooks(*model.both(listed=False))
    assert snapshot(model) == before

# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The bootenv step's decisions (steps/bootenv.py): arm, commit, roll back, on a model device
(switch_model.Model); after applying a plan, the same decision must be empty.
"""

from __future__ import annotations

import json

import pytest
from switch_model import ARMED_MARKERS, DIGEST_NEW, DIGEST_OLD, Model, armed, bootenv_plan, bootfiles_done, grubenv

from ansible_collections.osfleet.hup.plugins.plugin_utils import bootenv
from ansible_collections.osfleet.hup.plugins.plugin_utils.errors import PlanError
from ansible_collections.osfleet.hup.plugins.plugin_utils.markers import (
    ALTBOOT_BREADCRUMB,
    ALTBOOT_TRIGGERED,
    HEALTH_BREADCRUMB,
    HEALTH_FAILED,
    HEALTH_TRIGGERED,
    HEALTH_VARIABLES_FILE,
    ROLLBACK_MARKER,
)
from ansible_collections.osfleet.hup.plugins.plugin_utils.steps.bootenv import (
    current_boot_state,
    needs_listing,
    plan_arm,
    plan_commit,
    plan_point_at_running,
    plan_rollback,
    rollback_target,
)


@pytest.mark.parametrize("grub", [False, True])
def test_arm_then_idempotent(grub):
    model = bootfiles_done(Model.fresh(grub=grub))
    model.state[HEALTH_TRIGGERED] = ""
    model.state[ROLLBACK_MARKER] = '{"reason": "checks"}'
    if not grub:
        model.boot["bootcount.env"] = "bootcount=2\n"
    plan = plan_arm(*model.both())
    assert plan.changed and plan.data["boot_env"]["resin_root_part"] == 3 and plan.data["boot_env"]["upgrade_available"]
    # breadcrumbs come before the env flip
    first_env = next(i for i, op in enumerate(plan.ops) if op[1].startswith("/mnt/boot/"))
    assert all(op[1].startswith("/mnt/state/") for op in plan.ops[:first_env])
    assert plan.diff["before"] != plan.diff["after"]
    model.apply(plan.ops)
    env = model.env()
    assert env["resin_root_part"] == "3" and env["upgrade_available"] == "1"
    assert env.get("bootcount", "0") == "0"
    assert "bootcount.env" not in model.boot
    assert model.state == ARMED_MARKERS
    if grub:
        assert len(model.boot["grub/grubenv"].encode()) == 1024
    else:
        assert model.boot["resinOS_uEnv.txt"] == "resin_root_part=3\nupgrade_available=1\n"
    again = plan_arm(*model.both())
    assert not again.changed and again.actions == [] and again.diff is None


def test_arm_diff_shows_env_and_markers():
    model = bootfiles_done(Model.fresh())
    plan = plan_arm(*model.both())
    assert "# resinOS_uEnv.txt\nresin_root_part=2\nupgrade_available=0\n" in plan.diff["before"]
    assert "# resinOS_uEnv.txt\nresin_root_part=3\nupgrade_available=1\n" in plan.diff["after"]
    assert "rollback-health-breadcrumb" not in plan.diff["before"] and "rollback-health-breadcrumb\n" in plan.diff["after"]
    assert plan.actions[0] == "set the bootloader env: resin_root_part 2 -> 3 (resin-rootB), upgrade_available 0 -> 1"


def test_arm_rewrites_wrong_variables_and_adds_missing_breadcrumb():
    model = armed(Model.fresh())
    model.state[HEALTH_VARIABLES_FILE] = "BALENAOS_ROLLBACK_VPNONLINE=1\n"
    del model.state[ALTBOOT_BREADCRUMB]
    plan = plan_arm(*model.both())
    assert sorted(plan.ops) == [("put", "/mnt/state/rollback-altboot-breadcrumb", ""),
                                ("put", "/mnt/state/rollback-health-variables", "BALENAOS_ROLLBACK_VPNONLINE=0\n")]
    assert "rewrote /mnt/state/rollback-health-variables" in plan.actions


@pytest.mark.parametrize(
    "stamp, expected, error",
    [
        ({}, None, "holds no verified release; run osfleet.hup.rootfs first"),
        ({"version": "2.113.0"}, None, "holds no verified release"),
        ({"version": "2.113.0", "digest": DIGEST_NEW}, "sha256:" + "c" * 64, "not the expected"),
    ],
)
def test_arm_needs_the_right_stamp(stamp, expected, error):
    model = bootfiles_done(Model.fresh())
    model.inactive_stamp = stamp
    with pytest.raises(PlanError, match=error):
        plan_arm(*model.both(), expected_digest=expected)


def test_arm_needs_the_boot_files():
    model = Model.fresh()
    with pytest.raises(PlanError, match=r"does not hold the boot files .* \(3 differ: .*\); run osfleet.hup.bootfiles first"):
        plan_arm(*model.both())


def test_arm_after_the_target_booted_is_a_no_op():
    model = armed(Model.fresh())
    model.reboot()
    plan = plan_arm(*model.both(), expected_digest=DIGEST_NEW)
    assert not plan.changed and "already booted the target from resin-rootB (waiting for its commit)" in plan.msg
    # without the digest it cannot tell, and the inactive root now holds the old release
    with pytest.raises(PlanError, match="not the expected"):
        plan_arm(*model.both(), expected_digest=DIGEST_OLD.replace("a", "c"))


@pytest.mark.parametrize("grub", [False, True])
def test_commit_is_rollback_stop(grub):
    model = armed(Model.fresh(grub=grub))
    model.reboot()
    model.state[HEALTH_FAILED] = ""
    model.state[ALTBOOT_TRIGGERED] = ""
    if grub:
        model.boot["grub/grubenv"] = grubenv({"resin_root_part": "3", "upgrade_available": "1", "bootcount": "1"})
    else:
        model.boot["bootcount.env"] = "bootcount=1\n"
    plan = plan_commit(*model.both(listed=False))
    model.apply(plan.ops)
    env = model.env()
    assert env["upgrade_available"] == "0" and env["resin_root_part"] == "3" and env.get("bootcount", "0") == "0"
    assert "bootcount.env" not in model.boot
    # the *-triggered markers survive rollback-stop (facts §9.1)
    assert set(model.state) == {ALTBOOT_TRIGGERED}
    assert not plan_commit(*model.both(listed=False)).changed


def test_commit_refuses_an_env_armed_for_a_root_that_has_not_booted():
    model = armed(Model.fresh())
    with pytest.raises(PlanError, match="armed for resin-rootB, which has not booted yet .* reboot into it"):
        plan_commit(*model.both(listed=False))


def test_commit_on_a_committed_device_is_a_no_op():
    plan = plan_commit(*Model.fresh().both(listed=False))
    assert not plan.changed and plan.diff is None and plan.actions == []


def test_commit_removes_a_leftover_bootcount():
    model = Model.fresh()
    model.boot["bootcount.env"] = "bootcount=0\n"
    plan = plan_commit(*model.both(listed=False))
    assert plan.ops == [("del", "/mnt/boot/bootcount.env", "")]
    assert "# bootcount.env: (absent)" in plan.diff["after"]


@pytest.mark.parametrize(
    "root, armed_flag, expected",
    [
        (3, True, 2),   # armed for B, not booted yet (or the bootloader fell back to A): disarm, stay on A
        (3, False, 3),  # env at B, not armed: a rollback to B waits for its reboot
        (2, True, 3),   # booted A from an armed env: back to B
        (2, False, 2),  # not armed, env at the booted root: nothing switched
    ],
)
def test_rollback_target(root, armed_flag, expected):
    state = bootenv.BootState("uboot", root, armed_flag, 0)
    assert rollback_target(state, 2, 3) == expected


def test_rollback_target_refuses_a_foreign_partition():
    with pytest.raises(PlanError, match="neither root"):
        rollback_target(bootenv.BootState("uboot", 5, False, 0), 2, 3)


def test_rollback_after_the_new_os_booted():
    model = armed(Model.fresh())
    model.reboot()  # runs 2.113.0 from rootB, pending commit
    plan = plan_rollback(*model.both(), reason="checks", now="2026-01-01T00:00:00Z")
    assert plan.data["rollback_to"] == {"root": "resin-rootA", "version": "2.88.4"}
    assert sorted(plan.data["restored"]) == ["EFI/BOOT/bootx64.efi", "bzImage"]
    model.apply(plan.ops)
    assert model.env() == {"resin_root_part": "2", "upgrade_available": "0"}
    assert model.boot["bzImage"] == "kernel 2.88.4"
    assert set(model.state) == {ROLLBACK_MARKER}
    marker = json.loads(model.state[ROLLBACK_MARKER])
    assert marker["reason"] == "checks" and marker["at"] == "2026-01-01T00:00:00Z" and marker["to_root"] == "resin-rootA"
    # the file only the new OS ships goes, so the partition is the old OS's again
    assert plan.data["removed"] == ["overlays/b.dtbo"] and "overlays/b.dtbo" not in model.boot
    assert "overlays/b.dtbo" in plan.diff["before"] and "overlays/b.dtbo  (absent)" in plan.diff["after"]
    assert model.boot["config.txt"] == "user config"  # kept back, never removed
    again = plan_rollback(*model.both(), reason="checks", now="later")
    assert not again.changed
    model.reboot()
    assert model.active == "resin-rootA" and model.version == "2.88.4"
    assert not plan_rollback(*model.both(), reason="checks", now="later").changed


def test_rollback_of_an_armed_env_disarms_and_restores_the_active_boot_files():
    model = armed(Model.fresh())
    plan = plan_rollback(*model.both(), now="t")
    model.apply(plan.ops)
    assert model.env()["resin_root_part"] == "2" and model.env()["upgrade_available"] == "0"
    assert model.boot["bzImage"] == "kernel 2.88.4"
    assert not any(m in model.state for m in (HEALTH_BREADCRUMB, ALTBOOT_BREADCRUMB, HEALTH_VARIABLES_FILE))
    assert json.loads(model.state[ROLLBACK_MARKER])["reason"] == "requested"


def test_rollback_on_an_untouched_device_changes_nothing():
    model = Model.fresh()
    plan = plan_rollback(*model.both(), now="t")
    assert not plan.changed and plan.data["rollback_to"]["root"] == "resin-rootA"


def test_rollback_keeps_the_fingerprint_when_no_file_changes():
    model = Model.fresh()
    model.boot["balenaos.fingerprint"] = "balena's md5 list"
    assert not plan_rollback(*model.both(), now="t").changed


def test_rollback_to_an_empty_root_is_refused():
    model = armed(Model.fresh())
    model.reboot()
    model.inactive_version = ""
    with pytest.raises(PlanError, match="holds no OS"):
        plan_rollback(*model.both(), target_index=2)


def test_rollback_explicit_target_after_the_device_committed():
    model = armed(Model.fresh())
    model.reboot()
    model.apply(plan_commit(*model.both()).ops)
    # bootenv's own rule: nothing to roll back on a committed device
    assert not plan_rollback(*model.both()).changed
    # health passes the inactive root explicitly
    plan = plan_rollback(*model.both(), target_index=model.dev().inactive_index, reason="checks")
    model.apply(plan.ops)
    model.reboot()
    assert model.active == "resin-rootA" and model.boot["bzImage"] == "kernel 2.88.4"


def test_decide_bootenv_dispatch():
    model = bootfiles_done(Model.fresh())
    assert bootenv_plan(*model.both(), state="armed").changed
    assert not bootenv_plan(*model.both(), state="committed").changed
    # not armed: rolled_back only puts the booted root's boot files back
    rolled = bootenv_plan(*model.both(), state="rolled_back")
    assert sorted(rolled.data["restored"]) == ["EFI/BOOT/bootx64.efi", "bzImage"]
    assert not any(op[1] == "/mnt/boot/resinOS_uEnv.txt" for op in rolled.ops)
    with pytest.raises(PlanError, match="expected_digest applies to state=armed only"):
        bootenv_plan(*model.both(), state="committed", expected_digest=DIGEST_NEW)
    with pytest.raises(PlanError, match="unknown state"):
        bootenv_plan(*model.both(), state="bogus")
    assert not needs_listing("committed") and needs_listing("armed")


def test_unsupported_env():
    model = Model.fresh()
    del model.boot["resinOS_uEnv.txt"]
    with pytest.raises(PlanError, match="no bootloader env"):
        plan_commit(*model.both())
    model.boot["bootenv"] = "x"
    dev = model.dev()
    dev.grubenv_path = "/mnt/boot/bootenv"
    with pytest.raises(PlanError, match="unsupported bootloader env /mnt/boot/bootenv"):
        current_boot_state(dev)


def test_unreadable_env():
    model = Model.fresh()
    model.boot["resinOS_uEnv.txt"] = "resin_root_part=zz\nupgrade_available=0\n"
    with pytest.raises(PlanError, match="cannot read the bootloader env"):
        plan_commit(*model.both())


def test_arm_in_check_mode_before_bootfiles_shows_the_env_change():
    model = Model.fresh()  # stamped, but the boot files are not copied yet
    plan = plan_arm(*model.both(), assume_staged=True)
    assert plan.changed and "resin_root_part=3" in plan.diff["after"]
    assert any("assumed the earlier steps staged the release" in a for a in plan.actions)
    model.inactive_stamp = {}
    assert bootenv_plan(*model.both(), state="armed", assume_staged=True).changed


def _nearly_full_after_the_update(free_after_update: int) -> Model:
    """Booted into 2.113.0 (not committed) with two 100 KiB files to restore, and a boot partition
    with ``free_after_update`` bytes free."""
    model = Model.fresh()
    for payload in (model.active_payload, model.boot):
        payload.update({"bzImage": "o" * 100 * 1024, "EFI/BOOT/bootx64.efi": "p" * 100 * 1024})
    model.inactive_payload.update({"bzImage": "n" * 100 * 1024, "EFI/BOOT/bootx64.efi": "m" * 100 * 1024})
    model = armed(model)
    model.reboot()
    model.capacity = model.used() + free_after_update
    return model


def test_rollback_plans_the_peak_of_the_copy_with_a_reserve():
    """The apply script writes both old files back before it removes either new one: 200 KiB at
    its peak. The old plan credited the first file's replaced size at once and kept no reserve, so
    it passed 150 KiB and the rollback then failed on the device (leaving the failing OS)."""
    for free in (150 * 1024, 200 * 1024 + 60 * 1024):
        model = _nearly_full_after_the_update(free)
        with pytest.raises(PlanError, match=r"boot partition too small: needs \d+ KiB, has \d+ KiB free \(keeps 64 KiB reserve\)"):
            plan_rollback(*model.both(), target_index=model.dev().inactive_index, reason="checks")
    model = _nearly_full_after_the_update(200 * 1024 + 64 * 1024 + 4096)  # and the new fingerprint
    plan = plan_rollback(*model.both(), target_index=model.dev().inactive_index, reason="checks")
    assert sorted(plan.data["restored"]) == ["EFI/BOOT/bootx64.efi", "bzImage"]
    model.apply(plan.ops)  # the model fails when its partition overflows
    assert model.boot["bzImage"] == "o" * 100 * 1024


def test_point_at_running_after_a_rollback_waiting_for_its_reboot():
    """Issue 7 item 1: the new OS booted, was rolled back (env at the old root, upgrade_available=0),
    and a new update is to write the old root: the env goes back to the running root, with its boot
    files, and the marker of the rollback stays as it was."""
    model = armed(Model.fresh())
    model.reboot()
    model.apply(plan_rollback(*model.both(), reason="checks", now="t1").ops)
    marker = model.state[ROLLBACK_MARKER]
    assert model.env()["resin_root_part"] == "2" and model.active == "resin-rootB"
    plan = plan_point_at_running(*model.both())
    model.apply(plan.ops)
    assert model.env()["resin_root_part"] == "3" and model.env()["upgrade_available"] == "0"
    assert model.boot["bzImage"] == "kernel 2.113.0", "the running root's boot files"
    assert model.state[ROLLBACK_MARKER] == marker, "no rollback is recorded"
    assert "set the bootloader env: resin_root_part 2 -> 3 (resin-rootB)" in plan.actions
    assert not plan_point_at_running(*model.both()).changed
    model.reboot()
    assert model.active == "resin-rootB"


def test_point_at_running_disarms_an_env_armed_for_the_inactive_root():
    model = armed(Model.fresh())
    model.apply(plan_point_at_running(*model.both()).ops)
    assert model.env()["resin_root_part"] == "2" and model.env()["upgrade_available"] == "0"
    assert model.boot["bzImage"] == "kernel 2.88.4"
    assert ROLLBACK_MARKER not in model.state
    assert not any(m in model.state for m in (HEALTH_BREADCRUMB, ALTBOOT_BREADCRUMB, HEALTH_VARIABLES_FILE))

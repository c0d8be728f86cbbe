# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The pure decisions of bootfiles, bootenv, reboot and health (plugin_utils.plan_switch).

Most tests run the step's cycle on a model device (switch_model.Model): decide, apply the file
operations, decide again; the second decision must be empty (that is the steps' verify and
their idempotency).
"""

from __future__ import annotations

import json

import pytest
from switch_model import DIGEST_NEW, DIGEST_OLD, Model, grubenv, sha

from ansible_collections.osfleet.hup.plugins.plugin_utils import bootenv, plan_switch
from ansible_collections.osfleet.hup.plugins.plugin_utils.errors import PlanError
from ansible_collections.osfleet.hup.plugins.plugin_utils.version import same_version
from ansible_collections.osfleet.hup.plugins.plugin_utils.plan_switch import (
    ALTBOOT_BREADCRUMB,
    ALTBOOT_TRIGGERED,
    HEALTH_BREADCRUMB,
    HEALTH_FAILED,
    HEALTH_TRIGGERED,
    HEALTH_VARIABLES_FILE,
    ROLLBACK_MARKER,
    CheckResult,
)

KEEP_BACK = ("config.json", "config.txt", "splash/balena-logo.png", "extra_uEnv.txt")
ARMED_MARKERS = {HEALTH_BREADCRUMB: "", ALTBOOT_BREADCRUMB: "", HEALTH_VARIABLES_FILE: "BALENAOS_ROLLBACK_VPNONLINE=0\n"}


def bootfiles_done(model: Model) -> Model:
    model.apply(plan_switch.decide_bootfiles(*model.both()).ops)
    return model


def armed(model: Model) -> Model:
    bootfiles_done(model)
    model.apply(plan_switch.plan_arm(*model.both()).ops)
    return model


# --- parsing the probe ---------------------------------------------------------------------------

@pytest.mark.parametrize(
    "sha_text, size_text, other, files, bad",
    [
        ("", "", "", {}, ()),
        (f"{'1' * 64}  ./a\n", "3 ./a\n", "", {"a": ("1" * 64, 3, "")}, ()),
        (f"{'1' * 64}  ./dir/with space\n", "3 ./dir/with space\n", "", {"dir/with space": ("1" * 64, 3, "")}, ()),
        # a name with a line break: the probe lists it among the others too
        (f"{'1' * 64}  ./bad\nname\n", "3 ./bad\nname\n", "./bad\nname\n", {}, ("name", "bad")),
        # listed by sha256sum but not by stat (vanished in between)
        (f"{'1' * 64}  ./a\n", "", "", {}, ("a",)),
        # a dangling symlink or a device node
        ("", "", "./dangling\n", {}, ("dangling",)),
        # a component that check_path refuses
        (f"{'1' * 64}  ./a/./b\n", "3 ./a/./b\n", "", {}, ("a/./b",)),
        ("garbage\n", "", "", {}, ("garbage",)),
    ],
)
def test_parse_listing(sha_text, size_text, other, files, bad):
    listing = plan_switch.parse_listing(sha_text, size_text, other)
    assert {k: tuple(v) for k, v in listing.files.items()} == files
    assert set(listing.bad) == set(bad)


def test_parse_listing_md5():
    sha_text = f"{'1' * 64}  ./a\n{'2' * 64}  ./dir/b c\n"
    md5_text = f"{'3' * 32}  ./dir/b c\n{'4' * 32}  ./gone\ngarbage\n"
    listing = plan_switch.parse_listing(sha_text, "3 ./a\n4 ./dir/b c\n", md5_text=md5_text)
    assert listing.files == {"a": ("1" * 64, 3, ""), "dir/b c": ("2" * 64, 4, "3" * 32)}
    assert listing.bad == ()  # md5 lines never make a file bad: they only feed the fingerprint


def test_parse_switch_probe_not_listed():
    probe = plan_switch.parse_switch_probe({"listed": "0", "bootcount_present": "1", "health_variables_present": "1",
                                            "health_variables": "X=1", "rollback_marker_present": "0"})
    assert probe.boot is None and probe.boot_free_bytes is None and not probe.listed
    assert probe.bootcount_present and probe.health_variables == "X=1" and probe.rollback_marker is None


def test_parse_switch_probe_listed():
    raw = {
        "listed": "1", "boot_statfs": "100 4096",
        "boot_sha": f"{'2' * 64}  ./zImage\n", "boot_md5": f"{'3' * 32}  ./zImage\n", "boot_size": "5 ./zImage\n", "boot_other": "",
        "active_present": "1", "active_sha": "", "active_size": "", "active_other": "",
        "inactive_present": "0",
        "rollback_marker_present": "1", "rollback_marker": '{"reason": "checks"}',
    }
    probe = plan_switch.parse_switch_probe(raw)
    assert probe.boot_free_bytes == 409600
    assert probe.boot.files["zImage"].size == 5 and probe.boot.files["zImage"].md5 == "3" * 32
    assert probe.payloads["active"].present and not probe.payloads["inactive"].present
    assert probe.rollback_marker == {"reason": "checks"}


def test_parse_switch_probe_unreadable_marker():
    probe = plan_switch.parse_switch_probe({"rollback_marker_present": "1", "rollback_marker": "not json"})
    assert probe.rollback_marker["reason"] == "unknown"


# --- file operations -----------------------------------------------------------------------------

@pytest.mark.parametrize(
    "ops, error",
    [
        ([("put", "/mnt/boot/a", "x")], None),
        ([("copy", "/mnt/boot/a", "/mnt/sysroot/inactive/resin-boot/a")], None),
        ([("del", "/mnt/state/rollback-health-breadcrumb", "")], None),
        ([("put", "/etc/passwd", "x")], "outside"),
        ([("put", "/mnt/bootx/a", "x")], "outside"),
        ([("put", "/mnt/boot/../etc/x", "x")], "'..'"),
        ([("put", "/mnt/boot/a\nb", "x")], "line break"),
        ([("put", "/mnt/boot/a", "x\0y")], "NUL"),
        ([("copy", "/mnt/boot/a", "/mnt/sysroot/../x")], "'..'"),
        ([("chmod", "/mnt/boot/a", "")], "unknown"),
    ],
)
def test_validate_ops(ops, error):
    if error is None:
        plan_switch.validate_ops(ops)
    else:
        with pytest.raises((PlanError, ValueError), match=error):
            plan_switch.validate_ops(ops)


def test_finish_ops_keeps_the_new_temporary():
    ops = [("del", "/mnt/boot/a.osfleet-tmp", ""), ("del", "/mnt/boot/b.osfleet-tmp", ""), ("copy", "/mnt/boot/a", "/src/a")]
    assert plan_switch.finish_ops(ops) == [("del", "/mnt/boot/b.osfleet-tmp", ""), ("copy", "/mnt/boot/a", "/src/a")]


# --- bootfiles -----------------------------------------------------------------------------------

def test_bootfiles_copies_the_new_payload_and_converges():
    model = Model.fresh()
    before = dict(model.boot)
    plan = plan_switch.decide_bootfiles(*model.both())
    assert sorted(plan.data["copied"]) == ["EFI/BOOT/bootx64.efi", "bzImage", "overlays/b.dtbo"]
    assert sorted(plan.data["kept_back"]) == sorted(KEEP_BACK[1:])  # config.json is not in the payload
    assert plan.data["unchanged"] == ["overlays/a.dtbo"]
    assert ("put", "/mnt/boot/balenaos.fingerprint", plan.ops[-1][2]) == plan.ops[-1]
    assert plan.diff and f"bzImage  {sha('kernel 2.88.4')}" in plan.diff["before"] and f"bzImage  {sha('kernel 2.113.0')}" in plan.diff["after"]
    assert "overlays/b.dtbo  (absent)" in plan.diff["before"]
    model.apply(plan.ops)
    for name in KEEP_BACK[:3]:
        assert model.boot[name] == before[name], name
    assert model.boot["bzImage"] == "kernel 2.113.0"
    again = plan_switch.decide_bootfiles(*model.both())
    assert not again.changed and again.actions == [] and again.diff is None
    assert sorted(again.data["unchanged"]) == ["EFI/BOOT/bootx64.efi", "bzImage", "overlays/a.dtbo", "overlays/b.dtbo"]


def test_bootfiles_fingerprint_ignores_the_bootloader_env():
    model = bootfiles_done(Model.fresh())
    model.boot["resinOS_uEnv.txt"] = "resin_root_part=3\nupgrade_available=1\n"
    model.boot["bootcount.env"] = "bootcount=2\n"
    assert not plan_switch.decide_bootfiles(*model.both()).changed


def test_bootfiles_extra_uenv_copied_only_when_absent():
    model = Model.fresh()
    del model.boot["extra_uEnv.txt"]
    plan = plan_switch.decide_bootfiles(*model.both())
    assert "extra_uEnv.txt" in plan.data["copied"]
    model.boot["extra_uEnv.txt"] = "os_bc_lim=1\n"
    plan = plan_switch.decide_bootfiles(*model.both())
    assert "extra_uEnv.txt" in plan.data["kept_back"] and "extra_uEnv.txt" not in plan.data["copied"]


@pytest.mark.parametrize(
    "extra_keep, kept",
    [
        (["bzImage"], "bzImage"),
        (["BZIMAGE"], "bzImage"),
        (["overlays/"], "overlays/b.dtbo"),
        (["EFI/"], "EFI/BOOT/bootx64.efi"),
    ],
)
def test_bootfiles_extra_keep(extra_keep, kept):
    plan = plan_switch.decide_bootfiles(*Model.fresh().both(), extra_keep=extra_keep)
    assert kept in plan.data["kept_back"] and kept not in plan.data["copied"]
    assert not any(op[1].endswith("/" + kept) for op in plan.ops)


@pytest.mark.parametrize("pattern", ["../x", "/abs", "a//b", "a\nb", ""])
def test_bootfiles_bad_extra_keep(pattern):
    with pytest.raises(PlanError, match="extra_keep"):
        plan_switch.decide_bootfiles(*Model.fresh().both(), extra_keep=[pattern])


def test_bootfiles_needs_a_stamp():
    model = Model.fresh()
    model.inactive_stamp = {}
    with pytest.raises(PlanError, match=r"the inactive root \(resin-rootB\) holds no verified release; run osfleet.hup.rootfs first"):
        plan_switch.decide_bootfiles(*model.both())


def test_bootfiles_stamp_must_name_the_target():
    with pytest.raises(PlanError, match="not the expected sha256:cc"):
        plan_switch.decide_bootfiles(*Model.fresh().both(), expected_digest="sha256:" + "c" * 64)
    assert plan_switch.decide_bootfiles(*Model.fresh().both(), expected_digest=DIGEST_NEW).changed


@pytest.mark.parametrize("bad", ["weird\nname", "dangling-link"])
def test_bootfiles_refuses_payload_entries_it_cannot_copy(bad):
    model = Model.fresh(bad_payload=(bad,))
    with pytest.raises(PlanError, match="cannot be copied"):
        plan_switch.decide_bootfiles(*model.both())


def test_bootfiles_empty_or_missing_payload():
    model = Model.fresh()
    model.inactive_payload = {}
    with pytest.raises(PlanError, match="holds no files"):
        plan_switch.decide_bootfiles(*model.both())
    model.sysroot_payload = False
    with pytest.raises(PlanError, match="has no /resin-boot"):
        plan_switch.decide_bootfiles(*model.both())


def test_bootfiles_space_check_fails_before_writing():
    model = Model.fresh()
    model.inactive_payload["bzImage"] = "k" * (600 * 1024)
    model.capacity = model.used() + 700 * 1024  # 700 KiB free; the copy needs 600 KiB + 512 KiB reserve
    with pytest.raises(PlanError) as exc:
        plan_switch.decide_bootfiles(*model.both())
    assert str(exc.value) == "boot partition too small: needs 1113 KiB, has 700 KiB free (keeps 512 KiB reserve)"
    # a smaller reserve lets it through
    assert plan_switch.decide_bootfiles(*model.both(), reserve_kib=64).changed
    with pytest.raises(PlanError, match="reserve_kib must not be negative"):
        plan_switch.decide_bootfiles(*model.both(), reserve_kib=-1)


def test_bootfiles_space_counts_the_replaced_file_only_after_the_rename():
    model = Model.fresh()
    model.boot["bzImage"] = "o" * (400 * 1024)
    model.inactive_payload = {**model.active_payload, "bzImage": "n" * (400 * 1024)}
    # 700 KiB free: the new kernel fits with the old one still there (300 KiB left) only without reserve
    model.capacity = model.used() + 700 * 1024
    with pytest.raises(PlanError, match="boot partition too small"):
        plan_switch.decide_bootfiles(*model.both())
    plan = plan_switch.decide_bootfiles(*model.both(), reserve_kib=256)
    assert plan.data["copied"] == ["bzImage"]
    assert plan.data["free_after_kib"] == 700  # the replaced kernel gives its space back


def test_bootfiles_case_insensitive_names_write_the_existing_name():
    model = Model.fresh()
    model.boot["EFI/BOOT/BOOTX64.EFI"] = model.boot.pop("EFI/BOOT/bootx64.efi")
    plan = plan_switch.decide_bootfiles(*model.both())
    assert ("copy", "/mnt/boot/EFI/BOOT/BOOTX64.EFI", "/mnt/sysroot/inactive/resin-boot/EFI/BOOT/bootx64.efi") in plan.ops
    assert "EFI/BOOT/BOOTX64.EFI" in plan.data["copied"]
    model.apply(plan.ops)
    assert "EFI/BOOT/bootx64.efi" not in model.boot
    assert not plan_switch.decide_bootfiles(*model.both()).changed


def test_bootfiles_removes_stale_temporaries():
    model = bootfiles_done(Model.fresh())
    model.boot["bzImage.osfleet-tmp"] = "half a kernel"
    model.boot["resinOS_uEnv.txt.osfleet-tmp"] = "half an env"
    plan = plan_switch.decide_bootfiles(*model.both())
    assert sorted(plan.ops) == [("del", "/mnt/boot/bzImage.osfleet-tmp", ""), ("del", "/mnt/boot/resinOS_uEnv.txt.osfleet-tmp", "")]
    assert "remove stale temporary /mnt/boot/bzImage.osfleet-tmp" in plan.actions
    model.apply(plan.ops)
    assert not plan_switch.decide_bootfiles(*model.both()).changed


def test_bootfiles_stale_temporary_of_a_file_being_copied_is_overwritten_not_removed():
    model = Model.fresh()
    model.boot["bzImage.osfleet-tmp"] = "half a kernel"
    plan = plan_switch.decide_bootfiles(*model.both())
    assert ("del", "/mnt/boot/bzImage.osfleet-tmp", "") not in plan.ops
    assert ("copy", "/mnt/boot/bzImage", "/mnt/sysroot/inactive/resin-boot/bzImage") in plan.ops


def test_bootfiles_needs_the_listing():
    model = Model.fresh()
    with pytest.raises(PlanError, match="did not list the boot partition"):
        plan_switch.decide_bootfiles(model.dev(), model.probe(listed=False))


# --- bootenv: armed ------------------------------------------------------------------------------

@pytest.mark.parametrize("grub", [False, True])
def test_arm_then_idempotent(grub):
    model = bootfiles_done(Model.fresh(grub=grub))
    model.state[HEALTH_TRIGGERED] = ""
    model.state[ROLLBACK_MARKER] = '{"reason": "checks"}'
    if not grub:
        model.boot["bootcount.env"] = "bootcount=2\n"
    plan = plan_switch.plan_arm(*model.both())
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
    again = plan_switch.plan_arm(*model.both())
    assert not again.changed and again.actions == [] and again.diff is None


def test_arm_diff_shows_env_and_markers():
    model = bootfiles_done(Model.fresh())
    plan = plan_switch.plan_arm(*model.both())
    assert "# resinOS_uEnv.txt\nresin_root_part=2\nupgrade_available=0\n" in plan.diff["before"]
    assert "# resinOS_uEnv.txt\nresin_root_part=3\nupgrade_available=1\n" in plan.diff["after"]
    assert "rollback-health-breadcrumb" not in plan.diff["before"] and "rollback-health-breadcrumb\n" in plan.diff["after"]
    assert plan.actions[0] == "set the bootloader env: resin_root_part 2 -> 3 (resin-rootB), upgrade_available 0 -> 1"


def test_arm_rewrites_wrong_variables_and_adds_missing_breadcrumb():
    model = armed(Model.fresh())
    model.state[HEALTH_VARIABLES_FILE] = "BALENAOS_ROLLBACK_VPNONLINE=1\n"
    del model.state[ALTBOOT_BREADCRUMB]
    plan = plan_switch.plan_arm(*model.both())
    assert sorted(plan.ops) == [("put", "/mnt/state/rollback-altboot-breadcrumb", ""),
                                ("put", "/mnt/state/rollback-health-variables", "BALENAOS_ROLLBACK_VPNONLINE=0\n")]
    assert "rewrite /mnt/state/rollback-health-variables" in plan.actions


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
        plan_switch.plan_arm(*model.both(), expected_digest=expected)


def test_arm_needs_the_boot_files():
    model = Model.fresh()
    with pytest.raises(PlanError, match=r"does not hold the boot files .* \(3 differ: .*\); run osfleet.hup.bootfiles first"):
        plan_switch.plan_arm(*model.both())


def test_arm_after_the_target_booted_is_a_no_op():
    model = armed(Model.fresh())
    model.reboot()
    plan = plan_switch.plan_arm(*model.both(), expected_digest=DIGEST_NEW)
    assert not plan.changed and "already booted the target from resin-rootB (waiting for its commit)" in plan.msg
    # without the digest it cannot tell, and the inactive root now holds the old release
    with pytest.raises(PlanError, match="not the expected"):
        plan_switch.plan_arm(*model.both(), expected_digest=DIGEST_OLD.replace("a", "c"))


# --- bootenv: committed --------------------------------------------------------------------------

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
    plan = plan_switch.plan_commit(*model.both(listed=False))
    model.apply(plan.ops)
    env = model.env()
    assert env["upgrade_available"] == "0" and env["resin_root_part"] == "3" and env.get("bootcount", "0") == "0"
    assert "bootcount.env" not in model.boot
    # the *-triggered markers survive rollback-stop (facts §9.1)
    assert set(model.state) == {ALTBOOT_TRIGGERED}
    assert not plan_switch.plan_commit(*model.both(listed=False)).changed


def test_commit_refuses_an_env_armed_for_a_root_that_has_not_booted():
    model = armed(Model.fresh())
    with pytest.raises(PlanError, match="armed for resin-rootB, which has not booted yet .* reboot into it"):
        plan_switch.plan_commit(*model.both(listed=False))


def test_commit_on_a_committed_device_is_a_no_op():
    plan = plan_switch.plan_commit(*Model.fresh().both(listed=False))
    assert not plan.changed and plan.diff is None and plan.actions == []


def test_commit_removes_a_leftover_bootcount():
    model = Model.fresh()
    model.boot["bootcount.env"] = "bootcount=0\n"
    plan = plan_switch.plan_commit(*model.both(listed=False))
    assert plan.ops == [("del", "/mnt/boot/bootcount.env", "")]
    assert "# bootcount.env: (absent)" in plan.diff["after"]


# --- rollback ------------------------------------------------------------------------------------

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
    assert plan_switch.rollback_target(state, 2, 3) == expected


def test_rollback_target_refuses_a_foreign_partition():
    with pytest.raises(PlanError, match="neither root"):
        plan_switch.rollback_target(bootenv.BootState("uboot", 5, False, 0), 2, 3)


def test_rollback_after_the_new_os_booted():
    model = armed(Model.fresh())
    model.reboot()  # runs 2.113.0 from rootB, pending commit
    plan = plan_switch.plan_rollback(*model.both(), reason="checks", now="2026-01-01T00:00:00Z")
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
    again = plan_switch.plan_rollback(*model.both(), reason="checks", now="later")
    assert not again.changed
    model.reboot()
    assert model.active == "resin-rootA" and model.version == "2.88.4"
    assert not plan_switch.plan_rollback(*model.both(), reason="checks", now="later").changed


def test_rollback_of_an_armed_env_disarms_and_restores_the_active_boot_files():
    model = armed(Model.fresh())
    plan = plan_switch.plan_rollback(*model.both(), now="t")
    model.apply(plan.ops)
    assert model.env()["resin_root_part"] == "2" and model.env()["upgrade_available"] == "0"
    assert model.boot["bzImage"] == "kernel 2.88.4"
    assert not any(m in model.state for m in (HEALTH_BREADCRUMB, ALTBOOT_BREADCRUMB, HEALTH_VARIABLES_FILE))
    assert json.loads(model.state[ROLLBACK_MARKER])["reason"] == "requested"


def test_rollback_on_an_untouched_device_changes_nothing():
    model = Model.fresh()
    plan = plan_switch.plan_rollback(*model.both(), now="t")
    assert not plan.changed and plan.data["rollback_to"]["root"] == "resin-rootA"


def test_rollback_keeps_the_fingerprint_when_no_file_changes():
    model = Model.fresh()
    model.boot["balenaos.fingerprint"] = "balena's md5 list"
    assert not plan_switch.plan_rollback(*model.both(), now="t").changed


def test_rollback_to_an_empty_root_is_refused():
    model = armed(Model.fresh())
    model.reboot()
    model.inactive_version = ""
    with pytest.raises(PlanError, match="holds no OS"):
        plan_switch.plan_rollback(*model.both(), target_index=2)


def test_rollback_explicit_target_after_the_device_committed():
    model = armed(Model.fresh())
    model.reboot()
    model.apply(plan_switch.plan_commit(*model.both()).ops)
    # bootenv's own rule: nothing to roll back on a committed device
    assert not plan_switch.plan_rollback(*model.both()).changed
    # health passes the inactive root explicitly
    plan = plan_switch.plan_rollback(*model.both(), target_index=model.dev().inactive_index, reason="checks")
    model.apply(plan.ops)
    model.reboot()
    assert model.active == "resin-rootA" and model.boot["bzImage"] == "kernel 2.88.4"


# --- decide_bootenv dispatch ---------------------------------------------------------------------

def test_decide_bootenv_dispatch():
    model = bootfiles_done(Model.fresh())
    assert plan_switch.decide_bootenv(*model.both(), state="armed").changed
    assert not plan_switch.decide_bootenv(*model.both(), state="committed").changed
    # not armed: rolled_back only puts the booted root's boot files back
    rolled = plan_switch.decide_bootenv(*model.both(), state="rolled_back")
    assert sorted(rolled.data["restored"]) == ["EFI/BOOT/bootx64.efi", "bzImage"]
    assert not any(op[1] == "/mnt/boot/resinOS_uEnv.txt" for op in rolled.ops)
    with pytest.raises(PlanError, match="expected_digest applies to state=armed only"):
        plan_switch.decide_bootenv(*model.both(), state="committed", expected_digest=DIGEST_NEW)
    with pytest.raises(PlanError, match="unknown state"):
        plan_switch.decide_bootenv(*model.both(), state="bogus")
    assert not plan_switch.needs_listing("committed") and plan_switch.needs_listing("armed")


def test_unsupported_env():
    model = Model.fresh()
    del model.boot["resinOS_uEnv.txt"]
    with pytest.raises(PlanError, match="no bootloader env"):
        plan_switch.plan_commit(*model.both())
    model.boot["bootenv"] = "x"
    dev = model.dev()
    dev.grubenv_path = "/mnt/boot/bootenv"
    with pytest.raises(PlanError, match="unsupported bootloader env /mnt/boot/bootenv"):
        plan_switch.env_files(dev, model.probe())


def test_unreadable_env():
    model = Model.fresh()
    model.boot["resinOS_uEnv.txt"] = "resin_root_part=zz\nupgrade_available=0\n"
    with pytest.raises(PlanError, match="cannot read the bootloader env"):
        plan_switch.plan_commit(*model.both())


# --- reboot --------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "env, only_if_pending, reboot, expected_root",
    [
        ("resin_root_part=2\nupgrade_available=0", True, False, "resin-rootA"),
        ("resin_root_part=2\nupgrade_available=0", False, True, "resin-rootA"),
        ("resin_root_part=3\nupgrade_available=1", True, True, "resin-rootB"),
        ("resin_root_part=3\nupgrade_available=0", True, True, "resin-rootB"),  # a rollback waiting for its boot
        ("resin_root_part=2\nupgrade_available=1", True, False, "resin-rootA"),  # booted, pending commit
    ],
)
def test_decide_reboot(env, only_if_pending, reboot, expected_root):
    model = Model.fresh()
    model.boot["resinOS_uEnv.txt"] = env
    dev = model.dev()
    state = bootenv.BootState.from_files("uboot", env)
    plan = plan_switch.decide_reboot(dev, state, only_if_pending=only_if_pending)
    assert (plan.reboot, plan.expected_root) == (reboot, expected_root)


def test_decide_reboot_past_the_boot_limit_expects_the_other_root():
    model = Model.fresh()
    state = bootenv.BootState("uboot", 3, True, 3, 3)
    plan = plan_switch.decide_reboot(model.dev(), state)
    assert plan.reboot and plan.expected_root == "resin-rootA"


# --- health --------------------------------------------------------------------------------------

def booted_new(**kw) -> Model:
    model = armed(Model.fresh(**kw))
    model.reboot()
    return model


def classify(model: Model, expected: str | None = "2.113.0") -> plan_switch.HealthView:
    dev, probe = model.both(listed=False)
    state = plan_switch.current_boot_state(dev, probe)[0]
    return plan_switch.classify_health(dev, probe, state, expected)


def _fell_back(model: Model) -> None:
    """The bootloader booted rootA again although the env names rootB (bootcount past the limit)."""
    model.boot["bootcount.env"] = "bootcount=4\n"


@pytest.mark.parametrize(
    "setup, expected, kind, reason, committed",
    [
        # the target runs, its rollback-health still tests
        (lambda m: (m.services.update({"rollback-health": "active"}), setattr(m, "rollback_health_state", "testing")),
         "2.113.0", "wait", None, False),
        # the target runs, rollback-health finished without committing (not installed or failed): ready, not committed
        (lambda m: None, "2.113.0", "ready", None, False),
        # the device committed by itself
        (lambda m: m.apply(plan_switch.plan_commit(*m.both()).ops), "2.113.0", "ready", None, True),
        # no expected version: markers only
        (lambda m: None, None, "ready", None, False),
        # rollback-health decided to roll back and reboots
        (lambda m: setattr(m, "rollback_health_state", "rolled-back"), "2.113.0", "wait", "health", False),
        # our own rollback waits for its reboot
        (lambda m: m.apply(plan_switch.plan_rollback(*m.both(), target_index=2, reason="checks").ops), "2.113.0", "wait", "checks", False),
    ],
)
def test_classify_on_the_new_root(setup, expected, kind, reason, committed):
    model = booted_new()
    setup(model)
    view = classify(model, expected)
    assert (view.kind, view.reason, view.committed) == (kind, reason, committed), view.msg


def test_classify_waiting_rollback_health_may_proceed_on_timeout():
    model = booted_new()
    model.rollback_health_state = "waiting"
    assert classify(model).proceed_on_timeout


def old_root(marker: str | None = None, reason: str | None = None) -> Model:
    """Back on rootA (2.88.4) after a rollback; the target 2.113.0 is on rootB."""
    model = booted_new()
    model.apply(plan_switch.plan_rollback(*model.both(), target_index=2, reason=reason or "checks").ops)
    model.reboot()
    if reason is None:
        del model.state[ROLLBACK_MARKER]
    if marker:
        model.state[marker] = ""
    return model


@pytest.mark.parametrize(
    "model_fn, kind, reason, text",
    [
        (lambda: old_root(ALTBOOT_TRIGGERED), "rolled_back", "altboot", "the new OS did not boot"),
        (lambda: old_root(HEALTH_TRIGGERED), "rolled_back", "health", "the device's health checks failed"),
        (lambda: old_root(reason="checks"), "rolled_back", "checks", "the health commands failed"),
        (lambda: old_root(reason="requested"), "rolled_back", "requested", "a rollback was requested"),
        (old_root, "rolled_back", "unknown", "no marker says why"),
    ],
)
def test_classify_rolled_back(model_fn, kind, reason, text):
    view = classify(model_fn())
    assert (view.kind, view.reason) == (kind, reason)
    assert text in view.msg and "runs 2.88.4 from resin-rootA, not 2.113.0" in view.msg


def test_classify_altboot_pending_then_done():
    model = armed(Model.fresh())
    _fell_back(model)  # env still names rootB, armed; the device runs rootA
    view = classify(model)
    assert view.kind == "wait" and view.reason == "altboot" and not view.proceed_on_timeout
    del model.state[ALTBOOT_BREADCRUMB]  # rollback-altboot could not run: no breadcrumb
    assert classify(model).kind == "rolled_back"


def test_classify_not_booted_yet():
    view = classify(armed(Model.fresh()))
    assert view.kind == "not_booted" and "reboot it first" in view.msg


def test_classify_wrong_version_without_rollback_evidence():
    model = Model.fresh()
    model.inactive_version = "2.100.0"
    view = classify(model)
    assert view.kind == "wrong" and "runs 2.88.4 from resin-rootA, not 2.113.0" in view.msg


def test_classify_stale_triggered_marker_ignored_on_the_expected_version():
    model = booted_new()
    model.state[HEALTH_TRIGGERED] = ""
    assert classify(model).kind == "ready"
    # without an expected version the marker is all there is
    assert classify(model, None).kind == "rolled_back"


def test_classify_versions_compare_as_versions():
    model = booted_new()
    assert classify(model, "v2.113.0").kind == "ready"


@pytest.mark.parametrize(
    "rcs, committed, commit, rollback, decision",
    [
        ([0, 0], False, True, True, "commit"),
        ([0, 0], True, True, True, "none"),
        ([0], False, False, True, "none"),
        ([], False, True, True, "commit"),
        ([0, 1], False, True, True, "rollback"),
        ([None], True, True, True, "rollback"),
        ([1], False, True, False, "fail"),
    ],
)
def test_decide_after_checks(rcs, committed, commit, rollback, decision):
    checks = [CheckResult(f"c{i}", rc) for i, rc in enumerate(rcs)]
    assert plan_switch.decide_after_checks(checks, committed=committed, commit=commit, rollback=rollback) == decision


def test_failed_checks_text():
    checks = [CheckResult("true", 0), CheckResult("false", 1, "", "boom\n"), CheckResult("x", None, "", "")]
    assert plan_switch.failed_checks_text(checks) == "'false' exited 1: boom; 'x' exited without a result"
    assert CheckResult("true", 0).as_dict()["ok"] is True


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [("2.113.0", "2.113.0", True), ("2.113.0", "v2.113.0", True), ("2.113.0", "2.113.1", False), ("weird", "weird", True), ("weird", "other", False)],
)
def test_same_version(a, b, same):
    assert same_version(a, b) is same


# --- check mode: the earlier steps did not write anything ----------------------------------------

def test_bootfiles_in_check_mode_before_rootfs_reports_the_copy_as_pending():
    model = Model.fresh()
    model.inactive_stamp = {}
    plan = plan_switch.decide_bootfiles(*model.both(), assume_staged=True)
    assert plan.changed and not plan.ops and "once osfleet.hup.rootfs has written it" in plan.actions[0]
    # a real run still fails
    with pytest.raises(plan_switch.NotStaged):
        plan_switch.decide_bootfiles(*model.both())


def test_arm_in_check_mode_before_bootfiles_shows_the_env_change():
    model = Model.fresh()  # stamped, but the boot files are not copied yet
    plan = plan_switch.plan_arm(*model.both(), assume_staged=True)
    assert plan.changed and "resin_root_part=3" in plan.diff["after"]
    assert any("assumes the earlier steps staged the release" in a for a in plan.actions)
    model.inactive_stamp = {}
    assert plan_switch.decide_bootenv(*model.both(), state="armed", assume_staged=True).changed


@pytest.mark.parametrize(
    "view, commands, commit, rollback, changed, words",
    [
        (plan_switch.HealthView("ready", committed=True), 2, True, True, False, ["run 2 health check"]),
        (plan_switch.HealthView("ready", committed=False), 0, True, True, True, ["commit the update"]),
        (plan_switch.HealthView("ready", committed=False), 1, False, False, False, ["run 1 health check"]),
        (plan_switch.HealthView("wait", "rollback-health is testing"), 1, True, True, True, ["wait for the device", "roll back"]),
        (plan_switch.HealthView("not_booted", "reboot it first"), 1, True, True, True, ["after the update's reboot, verify that the device runs 2.113.0"]),
        (plan_switch.HealthView("rolled_back", "rolled back", "altboot"), 0, True, True, True, ["(now: rolled back)"]),
    ],
)
def test_health_preview(view, commands, commit, rollback, changed, words):
    got_changed, actions = plan_switch.health_preview(view, "2.113.0", commands=commands, commit=commit, rollback=rollback)
    assert got_changed is changed
    for word in words:
        assert any(word in a for a in actions), actions

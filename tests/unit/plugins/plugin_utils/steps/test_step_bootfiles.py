# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The bootfiles step's decision (steps/bootfiles.py) on a model device (switch_model.Model): decide,
apply the file operations, decide again; the second decision must be empty (the step's verify and
its idempotency).
"""

from __future__ import annotations

import pytest
from switch_model import DIGEST_NEW, Model, bootfiles_plan, bootfiles_done, sha

from ansible_collections.osfleet.hup.plugins.plugin_utils.errors import NotStaged, PlanError


KEEP_BACK = ("config.json", "config.txt", "splash/balena-logo.png", "extra_uEnv.txt")


def test_bootfiles_copies_the_new_payload_and_converges():
    model = Model.fresh()
    before = dict(model.boot)
    plan = bootfiles_plan(*model.both())
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
    again = bootfiles_plan(*model.both())
    assert not again.changed and again.actions == [] and again.diff is None
    assert sorted(again.data["unchanged"]) == ["EFI/BOOT/bootx64.efi", "bzImage", "overlays/a.dtbo", "overlays/b.dtbo"]


def test_bootfiles_fingerprint_ignores_the_bootloader_env():
    model = bootfiles_done(Model.fresh())
    model.boot["resinOS_uEnv.txt"] = "resin_root_part=3\nupgrade_available=1\n"
    model.boot["bootcount.env"] = "bootcount=2\n"
    assert not bootfiles_plan(*model.both()).changed


def test_bootfiles_extra_uenv_copied_only_when_absent():
    model = Model.fresh()
    del model.boot["extra_uEnv.txt"]
    plan = bootfiles_plan(*model.both())
    assert "extra_uEnv.txt" in plan.data["copied"]
    model.boot["extra_uEnv.txt"] = "os_bc_lim=1\n"
    plan = bootfiles_plan(*model.both())
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
    plan = bootfiles_plan(*Model.fresh().both(), extra_keep=extra_keep)
    assert kept in plan.data["kept_back"] and kept not in plan.data["copied"]
    assert not any(op[1].endswith("/" + kept) for op in plan.ops)


@pytest.mark.parametrize("pattern", ["../x", "/abs", "a//b", "a\nb", ""])
def test_bootfiles_bad_extra_keep(pattern):
    with pytest.raises(PlanError, match="extra_keep"):
        bootfiles_plan(*Model.fresh().both(), extra_keep=[pattern])


def test_bootfiles_needs_a_stamp():
    model = Model.fresh()
    model.inactive_stamp = {}
    with pytest.raises(PlanError, match=r"the inactive root \(resin-rootB\) holds no verified release; run osfleet.hup.rootfs first"):
        bootfiles_plan(*model.both())


def test_bootfiles_stamp_must_name_the_target():
    with pytest.raises(PlanError, match="not the expected sha256:cc"):
        bootfiles_plan(*Model.fresh().both(), expected_digest="sha256:" + "c" * 64)
    assert bootfiles_plan(*Model.fresh().both(), expected_digest=DIGEST_NEW).changed


@pytest.mark.parametrize("bad", ["weird\nname", "dangling-link"])
def test_bootfiles_refuses_payload_entries_it_cannot_copy(bad):
    model = Model.fresh(bad_payload=(bad,))
    with pytest.raises(PlanError, match="cannot be copied"):
        bootfiles_plan(*model.both())


def test_bootfiles_empty_or_missing_payload():
    model = Model.fresh()
    model.inactive_payload = {}
    with pytest.raises(PlanError, match="holds no files"):
        bootfiles_plan(*model.both())
    model.sysroot_payload = False
    with pytest.raises(PlanError, match="has no /resin-boot"):
        bootfiles_plan(*model.both())


def test_bootfiles_space_check_fails_before_writing():
    model = Model.fresh()
    model.inactive_payload["bzImage"] = "k" * (600 * 1024)
    model.capacity = model.used() + 700 * 1024  # 700 KiB free; the copy needs 600 KiB + 512 KiB reserve
    with pytest.raises(PlanError) as exc:
        bootfiles_plan(*model.both())
    assert str(exc.value) == "boot partition too small: needs 1113 KiB, has 700 KiB free (keeps 512 KiB reserve)"
    # a smaller reserve lets it through
    assert bootfiles_plan(*model.both(), reserve_kib=64).changed
    with pytest.raises(PlanError, match="reserve_kib must not be negative"):
        bootfiles_plan(*model.both(), reserve_kib=-1)


def test_bootfiles_space_counts_the_replaced_file_only_after_the_rename():
    model = Model.fresh()
    model.boot["bzImage"] = "o" * (400 * 1024)
    model.inactive_payload = {**model.active_payload, "bzImage": "n" * (400 * 1024)}
    # 700 KiB free: the new kernel fits with the old one still there (300 KiB left) only without reserve
    model.capacity = model.used() + 700 * 1024
    with pytest.raises(PlanError, match="boot partition too small"):
        bootfiles_plan(*model.both())
    plan = bootfiles_plan(*model.both(), reserve_kib=256)
    assert plan.data["copied"] == ["bzImage"]
    # the replaced kernel gives its space back (the new fingerprint is a few bytes longer)
    assert plan.data["needed_kib"] >= 400 and 699 <= plan.data["free_after_kib"] <= 700


def test_bootfiles_case_insensitive_names_write_the_existing_name():
    model = Model.fresh()
    model.boot["EFI/BOOT/BOOTX64.EFI"] = model.boot.pop("EFI/BOOT/bootx64.efi")
    plan = bootfiles_plan(*model.both())
    assert ("copy", "/mnt/boot/EFI/BOOT/BOOTX64.EFI", "/mnt/sysroot/inactive/resin-boot/EFI/BOOT/bootx64.efi") in plan.ops
    assert "EFI/BOOT/BOOTX64.EFI" in plan.data["copied"]
    model.apply(plan.ops)
    assert "EFI/BOOT/bootx64.efi" not in model.boot
    assert not bootfiles_plan(*model.both()).changed


def test_bootfiles_removes_stale_temporaries():
    model = bootfiles_done(Model.fresh())
    model.boot["bzImage.osfleet-tmp"] = "half a kernel"
    model.boot["resinOS_uEnv.txt.osfleet-tmp"] = "half an env"
    plan = bootfiles_plan(*model.both())
    assert sorted(plan.ops) == [("del", "/mnt/boot/bzImage.osfleet-tmp", ""), ("del", "/mnt/boot/resinOS_uEnv.txt.osfleet-tmp", "")]
    assert "removed stale temporary /mnt/boot/bzImage.osfleet-tmp" in plan.actions
    model.apply(plan.ops)
    assert not bootfiles_plan(*model.both()).changed


def test_bootfiles_stale_temporary_of_a_file_being_copied_is_overwritten_not_removed():
    model = Model.fresh()
    model.boot["bzImage.osfleet-tmp"] = "half a kernel"
    plan = bootfiles_plan(*model.both())
    assert ("del", "/mnt/boot/bzImage.osfleet-tmp", "") not in plan.ops
    assert ("copy", "/mnt/boot/bzImage", "/mnt/sysroot/inactive/resin-boot/bzImage") in plan.ops


def test_bootfiles_needs_the_listing():
    model = Model.fresh()
    with pytest.raises(PlanError, match="did not list the boot partition"):
        bootfiles_plan(model.dev(), model.probe(listed=False))


def test_bootfiles_in_check_mode_before_rootfs_reports_the_copy_as_pending():
    model = Model.fresh()
    model.inactive_stamp = {}
    plan = bootfiles_plan(*model.both(), assume_staged=True)
    assert plan.changed and not plan.ops and "once osfleet.hup.rootfs has written it" in plan.actions[0]
    # --check --diff shows the plan (issue 8): the running OS's boot files, then the staged release's, keep-back named
    assert plan.diff is not None and "those of 2.88.4 (resin-rootA)" in plan.diff["before"]
    assert "osfleet.hup.rootfs writes to resin-rootB" in plan.diff["after"] and "config.json" in plan.diff["after"]
    # a real run still fails
    with pytest.raises(NotStaged):
        bootfiles_plan(*model.both())

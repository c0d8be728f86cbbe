# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

import hashlib

import pytest

from ansible_collections.osfleet.hup.plugins.plugin_utils.keepback import (
    KEEP_BACK_IF_ABSENT,
    KEEP_BACK_NEVER,
    FileInfo,
    check_path,
    allocated,
    plan_bootfiles,
    rule_for,
)

KIB = 1024
RESERVE = 512 * KIB  # the bootfiles step's documented reserve_kib


def plan_files(payload, boot, free_bytes, *, reserve=RESERVE, **kw):
    return plan_bootfiles(payload, boot, free_bytes, reserve=reserve, **kw)


def info(tag: str, size: int) -> FileInfo:
    return FileInfo(hashlib.sha256(tag.encode()).hexdigest(), size)


@pytest.mark.parametrize(
    "path, rule",
    [
        ("config.json", "never"),
        ("config.txt", "never"),
        ("splash/balena-logo.png", "never"),
        ("configfs.json", "never"),
        ("hw_intfc.conf", "never"),
        ("bootenv", "never"),
        ("resinOS_uEnv.txt", "never"),
        ("bootcount.env", "never"),
        ("grub/grubenv", "never"),
        ("EFI/BOOT/grubenv", "never"),
        ("system-connections/wifi", "never"),
        ("system-connections/sub/dir/x.nmconnection", "never"),
        ("system-proxy/redsocks.conf", "never"),
        ("CONFIG.JSON", "never"),  # vfat is case-insensitive
        ("Splash/Balena-Logo.PNG", "never"),
        ("extra_uEnv.txt", "if-absent"),
        ("grub/grub_extraenv", "if-absent"),
        ("EFI/BOOT/grub_extraenv", "if-absent"),
        ("Extra_UEnv.TXT", "if-absent"),
        ("grub_extraenv", "copy"),  # only under grub/ or EFI/BOOT/
        ("splash/other.png", "copy"),
        ("system-connections", "copy"),  # the directory name alone is not under it
        ("system-connectionsX/a", "copy"),
        ("config.json.bak", "copy"),
        ("sub/config.json", "copy"),
        ("Image", "copy"),
        ("overlays/foo.dtbo", "copy"),
        ("balenaos.fingerprint", "copy"),
        ("grub/grub.cfg", "copy"),
    ],
)
def test_rule_for(path, rule):
    assert rule_for(path) == rule


def test_every_listed_path_is_classified():
    for path in KEEP_BACK_NEVER:
        assert rule_for(path + "x" if path.endswith("/") else path) == "never"
    for path in KEEP_BACK_IF_ABSENT:
        assert rule_for(path) == "if-absent"


@pytest.mark.parametrize(
    "path, extra, rule",
    [
        ("my.conf", ("my.conf",), "never"),
        ("my.conf", ("other.conf",), "copy"),
        ("vendor/a.bin", ("vendor/",), "never"),
        ("vendorX/a.bin", ("vendor/",), "copy"),
        ("extra_uEnv.txt", ("extra_uEnv.txt",), "never"),  # a user keep makes it never
    ],
)
def test_rule_for_extra_keep(path, extra, rule):
    assert rule_for(path, extra_keep=extra) == rule


BAD_PATHS = [
    ("/config.json", "is absolute"),
    ("../etc/passwd", "contains '..'"),
    ("a/../config.json", "contains '..'"),
    ("a/..", "contains '..'"),
    ("./config.json", "has an empty or '.' component"),
    ("a//b", "has an empty or '.' component"),
    ("dir/", "has an empty or '.' component"),
    ("", "is empty or not a string"),
    ("a\nb", "contains a NUL or line break"),
    ("a\0b", "contains a NUL or line break"),
    ("a\rb", "contains a NUL or line break"),
]


@pytest.mark.parametrize("path, why", BAD_PATHS)
def test_bad_paths_refused(path, why):
    with pytest.raises(ValueError) as excinfo:
        check_path(path)
    assert str(excinfo.value) == f"boot file path {path!r} {why}"
    with pytest.raises(ValueError, match="boot file path"):
        rule_for(path)


@pytest.mark.parametrize("path, _why", BAD_PATHS)
def test_plan_refuses_bad_payload_and_boot_paths(path, _why):
    with pytest.raises(ValueError, match="boot file path"):
        plan_files({path: info("x", 1)}, {}, 10**9)
    with pytest.raises(ValueError, match="boot file path"):
        plan_files({}, {path: info("x", 1)}, 10**9)


def test_check_path_accepts_names_with_dots():
    assert check_path("a..b/c...d") == "a..b/c...d"
    assert check_path(".hidden") == ".hidden"


# --- the plan ------------------------------------------------------------------------------------

BOOT = {
    "config.json": info("config-device", 900),
    "config.txt": info("config-device-txt", 300),
    "extra_uEnv.txt": info("extra-device", 20),
    "resinOS_uEnv.txt": info("env", 40),
    "Image": info("kernel-old", 10 * KIB),
    "overlays/a.dtbo": info("a", 100),
    "old-only.bin": info("old", 50),
    "balenaos.fingerprint": info("fp-old", 500),
}
PAYLOAD = {
    "config.json": info("config-default", 800),
    "config.txt": info("config-default-txt", 300),
    "extra_uEnv.txt": info("extra-default", 10),
    "grub/grub_extraenv": info("grub-extra", 30),
    "Image": info("kernel-new", 12 * KIB),
    "overlays/a.dtbo": info("a", 100),
    "overlays/b.dtbo": info("b", 200),
    "balenaos.fingerprint": info("fp-new", 400),
}


def test_plan_classification():
    plan = plan_files(PAYLOAD, BOOT, 10 * 1024 * KIB)
    assert plan.copy == ["Image", "grub/grub_extraenv", "overlays/b.dtbo"]
    assert plan.unchanged == ["overlays/a.dtbo"]
    assert plan.kept_back == ["config.json", "config.txt", "extra_uEnv.txt"]
    assert "balenaos.fingerprint" not in plan.copy + plan.unchanged + plan.kept_back
    assert plan.changed


def fp_size(plan) -> int:
    return len(plan.fingerprint.encode())


def test_plan_space_arithmetic():
    """The apply script's order: every new file (and the new fingerprint) is written before any
    old one goes, so nothing replaced is credited before the peak."""
    free = 10 * 1024 * KIB
    plan = plan_files(PAYLOAD, BOOT, free)
    assert plan.needed_bytes == 12 * KIB + 30 + 200 + fp_size(plan)
    assert plan.low_water == free - plan.needed_bytes  # the new Image, b.dtbo, grub_extraenv and fingerprint beside the old ones
    assert plan.free_after == plan.low_water + 10 * KIB + 500  # then the old Image and fingerprint are freed
    assert plan.fits


def test_plan_counts_whole_blocks():
    """vfat allocates whole clusters: 1000 files of 10 bytes take 1000 clusters."""
    payload = {f"overlays/f{n:04d}.dtbo": info(f"n{n}", 10) for n in range(1000)}
    plan = plan_files(payload, {}, 10 * 1024 * KIB, block_size=16 * KIB)
    assert plan.needed_bytes == 1000 * 16 * KIB + allocated(fp_size(plan), 16 * KIB)
    assert not plan.fits
    assert plan_files(payload, {}, 10 * 1024 * KIB).fits  # byte-exact it would seem to fit
    assert allocated(0, 4096) == 0 and allocated(1, 4096) == 4096 and allocated(4096, 4096) == 4096 and allocated(5, 0) == 5


def test_plan_fingerprint_lists_the_resulting_partition():
    plan = plan_files(PAYLOAD, BOOT, 10 * 1024 * KIB)
    expected_files = {
        "config.txt": BOOT["config.txt"],
        "extra_uEnv.txt": BOOT["extra_uEnv.txt"],
        "Image": PAYLOAD["Image"],
        "overlays/a.dtbo": PAYLOAD["overlays/a.dtbo"],
        "overlays/b.dtbo": PAYLOAD["overlays/b.dtbo"],
        "grub/grub_extraenv": PAYLOAD["grub/grub_extraenv"],
        "old-only.bin": BOOT["old-only.bin"],
    }
    # no md5 listed here: each line falls back to the sha256 (balenaOS's layout otherwise)
    expected = "".join(f"{expected_files[path].sha256}  /{path}\n" for path in sorted(expected_files))
    assert plan.fingerprint == expected
    assert "config.json" not in plan.fingerprint and "balenaos.fingerprint" not in plan.fingerprint
    assert "resinOS_uEnv.txt" not in plan.fingerprint  # the env changes on every arm and boot
    assert plan.fingerprint_changed


def test_fingerprint_ignores_env_files_and_temporaries():
    boot = dict(BOOT)
    first = plan_files(PAYLOAD, boot, 10 * 1024 * KIB).fingerprint
    boot["bootcount.env"] = FileInfo("0" * 64, 12)
    boot["Image.osfleet-tmp"] = FileInfo("1" * 64, 7)
    boot["resinOS_uEnv.txt"] = FileInfo("2" * 64, 40)
    boot["grub/grubenv"] = FileInfo("3" * 64, 1024)
    boot["EFI/BOOT/grubenv"] = FileInfo("4" * 64, 1024)
    boot["bootenv"] = FileInfo("5" * 64, 8)
    assert plan_files(PAYLOAD, boot, 10 * 1024 * KIB).fingerprint == first
    assert "grubenv" not in first and "bootenv" not in first and "osfleet-tmp" not in first


def with_md5(tag: str, size: int) -> FileInfo:
    return info(tag, size)._replace(md5=hashlib.md5(tag.encode()).hexdigest())


def test_fingerprint_is_balenaos_md5sum_format():
    payload = {"Image": with_md5("kernel", 10), "EFI/BOOT/bootx64.efi": with_md5("efi", 5), "b c.txt": with_md5("space", 1)}
    boot = {"config.json": with_md5("conf", 3), "Zz": with_md5("zz", 2), "a": info("no-md5", 4)}
    plan = plan_files(payload, boot, 10**9)
    md5 = {name: hashlib.md5(tag.encode()).hexdigest() for name, tag in (("Image", "kernel"), ("EFI", "efi"), ("b", "space"), ("Zz", "zz"))}
    assert plan.fingerprint == (
        f"{md5['EFI']}  /EFI/BOOT/bootx64.efi\n"
        f"{md5['Image']}  /Image\n"
        f"{md5['Zz']}  /Zz\n"
        f"{info('no-md5', 4).sha256}  /a\n"  # listed without an md5: its sha256 stands in
        f"{md5['b']}  /b c.txt\n"
    )


def test_unchanged_ignores_the_md5():
    # the same file listed with and without an md5 (or a different one) is the same file
    plan = plan_files({"Image": with_md5("k", 10)}, {"Image": info("k", 10)}, 10**9)
    assert plan.copy == [] and plan.unchanged == ["Image"]
    plan = plan_files({"Image": with_md5("k", 10)}, {"Image": info("k", 10)._replace(md5="0" * 32)}, 10**9)
    assert plan.unchanged == ["Image"]


def test_plan_already_applied_is_unchanged():
    first = plan_files(PAYLOAD, BOOT, 10 * 1024 * KIB)
    after = {**BOOT, **{path: PAYLOAD[path] for path in first.copy}}
    after["balenaos.fingerprint"] = FileInfo(hashlib.sha256(first.fingerprint.encode()).hexdigest(), len(first.fingerprint))
    second = plan_files(PAYLOAD, after, 10 * KIB)  # little space left, but nothing to write
    assert second.copy == []
    assert not second.fingerprint_changed
    assert not second.changed
    assert second.fingerprint == first.fingerprint
    assert second.fits and second.needed_bytes == 0 and second.free_after == 10 * KIB
    assert "grub/grub_extraenv" in second.kept_back  # now present: if-absent keeps it


def test_plan_fingerprint_only_change():
    payload = {"Image": info("k", 10)}
    boot = {"Image": info("k", 10), "balenaos.fingerprint": info("stale", 10)}
    plan = plan_files(payload, boot, 10**9)
    assert plan.copy == [] and plan.fingerprint_changed and plan.changed


def test_plan_extra_keep():
    plan = plan_files(PAYLOAD, BOOT, 10 * 1024 * KIB, extra_keep=("overlays/",))
    assert plan.copy == ["Image", "grub/grub_extraenv"]
    assert plan.kept_back == ["config.json", "config.txt", "extra_uEnv.txt", "overlays/a.dtbo", "overlays/b.dtbo"]


def test_plan_same_hash_different_size_is_copied():
    plan = plan_files({"Image": FileInfo("a" * 64, 10)}, {"Image": FileInfo("a" * 64, 11)}, 10**9)
    assert plan.copy == ["Image"]


NEW_ONLY = {"a.bin": info("a", 100 * KIB), "b.bin": info("b", 50 * KIB)}
#: a boot partition whose fingerprint already lists NEW_ONLY, so that only the two files count
FP = plan_files(NEW_ONLY, {}, 10**9).fingerprint
DONE_FP = {"balenaos.fingerprint": FileInfo(hashlib.sha256(FP.encode()).hexdigest(), len(FP))}


@pytest.mark.parametrize(
    "free, fits",
    [
        (RESERVE + 150 * KIB, True),  # exactly at the reserve afterwards
        (RESERVE + 150 * KIB - 1, False),  # one byte short
        (RESERVE + 150 * KIB + 1, True),
        (0, False),
    ],
)
def test_plan_new_files_edge_at_reserve(free, fits):
    plan = plan_files(NEW_ONLY, DONE_FP, free)
    assert not plan.fingerprint_changed
    assert plan.free_after == free - 150 * KIB
    assert plan.low_water == plan.free_after
    assert plan.fits is fits


IMAGE_FP = plan_files({"Image": info("new", 120 * KIB)}, {}, 10**9).fingerprint
IMAGE_DONE_FP = {"balenaos.fingerprint": FileInfo(hashlib.sha256(IMAGE_FP.encode()).hexdigest(), len(IMAGE_FP))}


@pytest.mark.parametrize(
    "free, fits",
    [
        # replacing a 100 KiB file by a 120 KiB one: +20 KiB at the end, +120 KiB while both exist
        (RESERVE + 120 * KIB, True),
        (RESERVE + 120 * KIB - 1, False),  # the final state would fit, the atomic write would not
        (RESERVE + 20 * KIB, False),
    ],
)
def test_plan_replacement_edge_at_reserve(free, fits):
    plan = plan_files({"Image": info("new", 120 * KIB)}, {"Image": info("old", 100 * KIB), **IMAGE_DONE_FP}, free)
    assert plan.free_after == free - 20 * KIB
    assert plan.low_water == free - 120 * KIB
    assert plan.fits is fits


def test_plan_all_new_files_coexist_with_the_old_ones():
    """Two replaced files: the script writes both temporaries before it renames either, so the
    first replaced file's old size is no credit for the second (the old model counted it)."""
    boot = {"a": info("a-old", 100 * KIB), "b": info("b-old", 100 * KIB)}
    payload = {"a": info("a-new", 100 * KIB), "b": info("b-new", 100 * KIB)}
    plan = plan_files(payload, boot, RESERVE + 150 * KIB)
    assert plan.low_water < RESERVE + 150 * KIB - 200 * KIB and not plan.fits


def test_plan_shrinking_file_and_custom_reserve():
    boot = {"Image": info("old", 1000)}
    plan = plan_files({"Image": info("new", 10)}, boot, 100 + fp_size(plan_files({"Image": info("new", 10)}, boot, 0)), reserve=90)
    assert plan.low_water == 90
    assert plan.free_after == 1090
    assert plan.fits
    assert not plan_files({"Image": info("new", 11)}, boot, 100 + fp_size(plan), reserve=90).fits


def test_plan_empty_payload():
    plan = plan_files({}, {}, 0, reserve=0)
    assert plan.copy == [] and plan.fingerprint == "" and plan.fits
    assert plan_files({}, {}, 0).fits  # nothing to write: below the reserve is fine
    assert plan.fingerprint_changed  # no fingerprint file yet

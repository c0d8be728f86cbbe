# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The advanced update's checks and staging (issue 10): ``osfleet.hup.takeover`` on a jetson-xavier.

A jetson-xavier lab device on 5.1.0 (layout l4t-r32) whose target 6.1.0 (l4t-r35) needs the
advanced update; the lab's catalog carries the releases' whole-disk images (``labctl up
--disk-images``). Check mode shows the plan and mounts nothing; staging downloads the disk image
into a RAM filesystem on the device, checks its sha256 and copies the files to keep, and a second
run changes nothing; a partial download is resumed, a bad one is removed and refused; a catalog
without a disk image or with a wrong digest is refused naming the device; throughout, the disk is
untouched (same boot, same files on the boot partition, same partitions).
"""

from __future__ import annotations

import json
import os
import typing as t

import pytest
import test_steps_prepare as prep

from osfleet_harness import Lab

LAB_PREFIX = "ittko"
SOURCE, TARGET = "5.1.0", "6.1.0"
JX = "jetson-xavier"
STAGING = "/run/osfleet/takeover"


@pytest.fixture(scope="module")
def lab(make_lab: t.Callable[..., Lab]) -> Lab:
    made = make_lab(LAB_PREFIX + os.environ.get("OSFLEET_LAB_SUFFIX", ""), 1, SOURCE, "ab", "--device-type", JX, "--disk-images")
    return made


@pytest.fixture(scope="module")
def steps(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> prep.Steps:
    return prep.Steps(lab, tmp_path_factory.mktemp("takeover"))


def takeover(catalog: str = "{{ hup_catalog }}", **args: t.Any) -> dict[str, t.Any]:
    return prep.step("takeover", catalog=catalog, target_version=TARGET, **args)


def disk_image(steps: prep.Steps) -> dict[str, t.Any]:
    (rel,) = [r for r in steps.lab.catalog()["releases"] if r["device_type"] == JX and r["version"] == TARGET]
    assert rel["disk_image"], "the lab's catalog carries the disk image (--disk-images)"
    return t.cast(dict[str, t.Any], rel["disk_image"])


def staging(steps: prep.Steps) -> dict[str, t.Any]:
    out = steps.lab.sh(steps.host, r"""
fs=$(awk -v d="$1" '$2 == d {t = $3} END {print t}' /proc/mounts)
sha=$( [ -f "$1/image.img.gz" ] && sha256sum < "$1/image.img.gz" | cut -d' ' -f1 )
keep=$( [ -f "$1/keep/config.json" ] && sha256sum < "$1/keep/config.json" | cut -d' ' -f1 )
jq -n --arg fs "$fs" --arg sha "$sha" --arg keep "$keep" --arg boot "$(sha256sum < /mnt/boot/config.json | cut -d' ' -f1)" \
  --arg part "$( [ -f "$1/image.img.gz.part" ] && echo yes )" '{fs: $fs, sha: $sha, keep: $keep, boot: $boot, part: $part}'
""", STAGING)
    return t.cast(dict[str, t.Any], json.loads(out))


def disk(steps: prep.Steps) -> str:
    """What must not change while staging: the OS that runs, the boot, the boot partition's files, the partitions."""
    return steps.lab.disk(steps.host)


def test_check_mode_shows_the_plan_and_touches_nothing(steps: prep.Steps) -> None:
    before = disk(steps)
    run = steps.play([takeover()], "--check", "--diff")
    assert run.rc == 0, run.summary()
    (res,) = steps.results(run)
    plan = res.result["plan"]
    assert res.changed and plan["problems"] == [] and "config.json" in plan["keep"]
    assert plan["download_bytes"] == disk_image(steps)["size"] and plan["disk_needed"] == disk_image(steps)["raw_size"]
    assert any("data partition" in lost for lost in plan["lost"])
    assert any("wrote the whole disk /dev/" in a for a in plan["actions"]), plan["actions"]
    assert any("downloaded the disk image of 6.1.0" in a for a in res.result["actions"]), res.result["actions"]
    assert staging(steps)["fs"] == "", "check mode mounts nothing"
    assert disk(steps) == before


def test_staging_downloads_verifies_and_keeps_then_changes_nothing(steps: prep.Steps) -> None:
    before = disk(steps)
    image = disk_image(steps)
    run = steps.play([takeover()], "--diff")
    assert run.rc == 0, run.summary()
    (res,) = steps.results(run)
    assert res.changed and res.result["downloaded"] == image["size"], res.result
    now = staging(steps)
    assert now["fs"] == "tmpfs" and now["sha"] == image["sha256"] and now["keep"] == now["boot"]
    assert res.result["staged"]["sha256"] == image["sha256"]
    assert disk(steps) == before, "staging never touches the disk"

    again = steps.play([takeover()])
    assert again.rc == 0, again.summary()
    (res,) = steps.results(again)
    assert not res.changed and res.result["downloaded"] == 0

    # a kept file that changed on the boot partition is staged again, the image is not downloaded again
    steps.lab.sh(steps.host, 'jq ".hostname = \\"jx-renamed\\"" /mnt/boot/config.json > /mnt/boot/c.tmp && mv /mnt/boot/c.tmp /mnt/boot/config.json')
    third = steps.play([takeover()])
    (res,) = steps.results(third)
    assert third.rc == 0 and res.changed and res.result["downloaded"] == 0, third.summary()
    now = staging(steps)
    assert now["keep"] == now["boot"]


def test_a_partial_download_is_resumed_and_a_bad_one_removed(steps: prep.Steps) -> None:
    image = disk_image(steps)
    steps.play([takeover(state="absent")])
    assert staging(steps)["fs"] == ""
    half = image["size"] // 2
    # an earlier download that stopped half way: its RAM filesystem and the part it got
    steps.lab.sh(steps.host, 'mkdir -p "$1" && mount -t tmpfs -o size=128m,mode=0700 osfleet-takeover "$1"'
                 ' && curl -fsS -r "0-$(($3 - 1))" -o "$1/image.img.gz.part" "$2"', STAGING, image["url"], str(half))
    run = steps.play([takeover()])
    assert run.rc == 0, run.summary()
    (res,) = steps.results(run)
    assert res.result["downloaded"] == image["size"] - half, res.result
    assert any("resuming an earlier download" in a for a in res.result["actions"]), res.result["actions"]
    assert staging(steps)["sha"] == image["sha256"]

    # a part that is not the start of the image: the resumed file's digest is wrong, it is removed
    steps.play([takeover(state="absent")])
    steps.lab.sh(steps.host, 'mkdir -p "$1" && mount -t tmpfs -o size=128m,mode=0700 osfleet-takeover "$1"'
                 ' && head -c 4096 /dev/urandom > "$1/image.img.gz.part"', STAGING)
    before = disk(steps)
    bad = steps.play([takeover()])
    assert bad.rc != 0, bad.summary()
    (res,) = steps.results(bad)
    assert res.result["msg"].startswith(f"{steps.host}: ") and f"not the catalog's {image['sha256']}" in res.result["msg"]
    assert "nothing was written to the disk" in res.result["msg"]
    now = staging(steps)
    assert now["part"] == "" and now["sha"] == "", "the bad download is gone"
    assert disk(steps) == before
    rerun = steps.play([takeover()])
    assert rerun.rc == 0, rerun.summary()
    assert staging(steps)["sha"] == image["sha256"]


def test_refusals_name_the_device_and_change_nothing(steps: prep.Steps) -> None:
    steps.play([takeover(state="absent")])
    before = disk(steps)

    def change_disk(**fields: t.Any) -> t.Callable[[dict[str, t.Any]], None]:
        def change(data: dict[str, t.Any]) -> None:
            for rel in data["releases"]:
                if rel["device_type"] == JX and rel["version"] == TARGET:
                    rel["disk_image"] = None if not fields else {**rel["disk_image"], **fields}
        return change

    cases = [
        (steps.catalog_copy("no-disk.json", change_disk()), "the catalog gives no disk image"),
        (steps.catalog_copy("small-disk.json", change_disk(raw_size=64 << 30)), "is smaller than the disk image of 6.1.0 unpacked"),
        (steps.catalog_copy("huge-image.json", change_disk(size=1 << 40)), "not enough RAM for the takeover"),
        (steps.catalog_copy("bad-sha.json", change_disk(sha256="0" * 64)), "not the catalog's " + "0" * 64),
    ]
    for catalog, fragment in cases:
        run = steps.play([takeover(catalog=catalog, catalog_allow_http=True)])
        assert run.rc != 0, (fragment, run.summary())
        (res,) = steps.results(run)
        assert res.result["msg"].startswith(f"{steps.host}: ") and fragment in res.result["msg"], res.result["msg"]
        assert not res.changed
        assert staging(steps)["sha"] == "", fragment
        assert disk(steps) == before, fragment
    steps.play([takeover(state="absent")])


def test_absent_gives_the_ram_back(steps: prep.Steps) -> None:
    steps.play([takeover()])
    assert staging(steps)["fs"] == "tmpfs"
    run = steps.play([takeover(state="absent")])
    (res,) = steps.results(run)
    assert run.rc == 0 and res.changed
    assert staging(steps)["fs"] == ""
    again = steps.play([takeover(state="absent")])
    (res,) = steps.results(again)
    assert again.rc == 0 and not res.changed

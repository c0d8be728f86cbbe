# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The hostapp writer's push transport on a balenaOS lab device (issue 9): a saved image streamed
from the controller and loaded with ``hostapp-update -f``.

The fetch step gets the full image by digest on the controller (skopeo, docker-archive), verifies it
there (config = the catalog's image_id, every layer = its diff_id), streams it into a directory of
its own on the device's data partition and verifies it there; the rootfs step runs ``hostapp-update
-f FILE``, which checks it once more, verifies the new hostapp by its image id, stamps it and removes
the file. A catalog naming a wrong image id is refused on the controller before anything is sent; an
archive corrupted on the device is refused before anything loads it, the partition untouched.
"""

from __future__ import annotations

import json
import os
import typing as t
from pathlib import Path

import pytest
import test_steps_prepare as prep
from osfleet_harness import Lab

LAB_PREFIX = "ithp"
LAB_DEVICES = 1
LAB_PROFILE = "balenaos"
SOURCE, TARGET = prep.SOURCE, prep.TARGET
JOB = "/run/osfleet/hostapp-update"
IMAGE_DIR = "/mnt/data/osfleet/hostapp-images"

# the inactive partition's hostapp, the job and the saved images, in one round trip
STATE = r"""
c=$(readlink /mnt/sysroot/inactive/current 2>/dev/null) || c=""
cid=${c##*/}
img=$(jq -r .Image "/mnt/sysroot/inactive/balena/containers/$cid/config.v2.json" 2>/dev/null) || img=""
jq -n --arg current "$c" --arg image "$img" --arg stamp "$(cat /mnt/sysroot/inactive/.osfleet-release.json 2>/dev/null)" \
  --arg uenv "$(cat /mnt/boot/resinOS_uEnv.txt)" --arg started "$(cat "$2/started" 2>/dev/null)" \
  --arg flag "$(cat "$2/flag" 2>/dev/null)" --arg job_image "$(cat "$2/image" 2>/dev/null)" \
  --arg files "$(ls -A "$1" 2>/dev/null)" --arg entries "$(find /mnt/sysroot/inactive -xdev | wc -l)" \
  '{current: $current, image: $image, stamp: (if $stamp == "" then null else ($stamp | fromjson) end), uenv: $uenv,
    started: $started, flag: $flag, job_image: $job_image, files: ($files | split("\n") | map(select(. != ""))), entries: $entries}'
"""


@pytest.fixture(scope="module")
def steps(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> prep.Steps:
    return prep.Steps(lab, tmp_path_factory.mktemp("push"))


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The controller's cache of saved images for this module."""
    return tmp_path_factory.mktemp("push-cache") / "images"


def device(steps: prep.Steps) -> dict[str, t.Any]:
    return t.cast(dict[str, t.Any], json.loads(steps.lab.sh(steps.host, STATE, IMAGE_DIR, JOB)))


def push(module: str, cache: Path, **args: t.Any) -> dict[str, t.Any]:
    return prep.release_step(module, hostapp_transport="push", hostapp_image_cache=str(cache), **args) if module == "fetch" \
        else prep.release_step(module, hostapp_transport="push", **args)


def saved_name(image_id: str) -> str:
    return image_id.split(":", 1)[1] + ".tar"


def test_a_catalog_with_a_wrong_image_id_is_refused_on_the_controller_before_anything_is_sent(steps: prep.Steps, cache: Path) -> None:
    wrong = "sha256:" + "ab" * 32
    catalog = steps.catalog_copy("wrong-image-id.json", prep.release_change(TARGET, image_id=wrong))
    before = device(steps)
    run = steps.play([push("fetch", cache, catalog=catalog)])
    assert run.rc != 0
    (fetch,) = steps.results(run)
    assert fetch.failed and fetch.result["msg"].startswith(steps.host)
    assert wrong in fetch.result["msg"] and "nothing was sent to the device" in fetch.result["msg"], fetch.result["msg"]
    assert steps.release(TARGET)["image_id"] in fetch.result["msg"], "it names the image the registry gave"
    assert device(steps)["files"] == [] == before["files"], "nothing reached the device"
    assert not [p for p in os.listdir(cache) if p.endswith(".tar")] if cache.exists() else True, "no unverified archive is kept"


def test_an_archive_corrupted_on_the_device_is_refused_before_anything_loads_it(steps: prep.Steps, cache: Path) -> None:
    release = steps.release(TARGET)
    run = steps.play([push("fetch", cache)])
    assert run.rc == 0, run.summary()
    (fetch,) = steps.results(run)
    name = saved_name(release["image_id"])
    assert fetch.changed and fetch.result["saved_image"] == f"{IMAGE_DIR}/{name}"
    before = device(steps)
    assert before["files"] == [name, f"{name}.json"] and before["current"] == "" and before["stamp"] is None
    # one byte changed inside the first layer member (its data starts after the 512-byte header)
    steps.lab.sh(steps.host, 'printf X | dd of="$1" bs=1 seek=1048576 conv=notrunc 2>/dev/null && sync', f"{IMAGE_DIR}/{name}")
    run = steps.play([push("rootfs", cache)])
    assert run.rc != 0
    (rootfs,) = steps.results(run)
    msg = rootfs.result["msg"]
    assert rootfs.failed and msg.startswith(steps.host) and "refusing to load the saved image" in msg, msg
    assert release["image_id"] in msg and "diff_id" in msg, msg
    after = device(steps)
    assert after["files"] == [], "the bad archive was removed"
    assert after["started"] == before["started"] == "", "hostapp-update never ran"
    assert (after["current"], after["image"], after["stamp"], after["entries"]) == (before["current"], before["image"], None, before["entries"])
    assert after["uenv"] == before["uenv"]


def test_push_writes_the_target_with_hostapp_update_f_and_a_second_run_changes_nothing(steps: prep.Steps, cache: Path) -> None:
    release = steps.release(TARGET)
    name = saved_name(release["image_id"])
    run = steps.play([push("fetch", cache), push("rootfs", cache)])
    assert run.rc == 0, run.summary()
    fetch, rootfs = steps.results(run)
    archive = cache / name
    assert archive.is_file(), "the controller keeps the verified archive"
    assert fetch.changed and fetch.result["writer"] == "hostapp" and fetch.result["transport"] == "push"
    assert fetch.result["bytes"] == archive.stat().st_size and fetch.result["source"] == "registry"
    assert fetch.result["saved_image"] == f"{IMAGE_DIR}/{name}"
    assert rootfs.changed and rootfs.result["mode"] == "hostapp" and rootfs.result["bytes"] == 0
    assert [a.get("file") for a in rootfs.result["attempts"]] == [f"{IMAGE_DIR}/{name}"] and rootfs.result["attempts"][0]["ok"]
    after = device(steps)
    assert after["flag"] == "-f" and after["job_image"] == f"{IMAGE_DIR}/{name}", "hostapp-update loaded the saved image"
    assert after["current"].startswith("hostapps/") and after["image"] == release["image_id"]
    assert after["stamp"]["image_id"] == release["image_id"] and after["stamp"]["digest"] == release["digest"]
    assert "resin_root_part=3" in after["uenv"] and "upgrade_available=1" in after["uenv"]
    assert after["files"] == [], "the saved image is removed once the hostapp is stamped"
    log = steps.lab.read(steps.host, f"{JOB}/log")
    assert "New/Forward hooks (new os container) ran successfully." in log

    again = steps.play([push("fetch", cache), push("rootfs", cache)])
    assert again.rc == 0, again.summary()
    assert [r.changed for r in steps.results(again)] == [False, False]
    assert device(steps)["started"] == after["started"], "hostapp-update did not run again"

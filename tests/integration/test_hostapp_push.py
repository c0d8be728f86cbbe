# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The hostapp writer's push transport on a balenaOS lab device (issue 9): a saved image streamed
from the controller and loaded with ``hostapp-update -f``.

The fetch step gets the full image by digest on the controller (skopeo, docker-archive), verifies it
there (config = the catalog's image_id, every layer = its diff_id), streams it into a directory of
its own on the device's data partition and verifies it there; the rootfs step runs ``hostapp-update
-f FILE``, which checks it once more, verifies the new hostapp by its image id, stamps it and removes
the file. A catalog naming a wrong image id is refused on the controller before anything is sent; an
archive corrupted on the device is refused before anything loads it, the partition untouched. A
send cut mid-way (the controller killed after the first chunk) leaves a partial copy that the next
run resumes from the bytes already there, verifies and loads.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import sys
import time
import typing as t
from pathlib import Path

import pytest
import test_steps_prepare as prep
from osfleet_harness import Lab, kill_controller

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


# --- an interrupted send, resumed by the next run ------------------------------------------------------------

#: the partial copy's name on the device: <image id hex>.<archive sha256 hex, 16>.part, then the put's offset
_PUT_AT = re.compile(rb"[0-9a-f]{64}\.[0-9a-f]{16}\.part\W{0,8}(\d+)")


def _ancestors(pid: int) -> set[int]:
    seen: set[int] = set()
    while pid > 1 and pid not in seen:
        seen.add(pid)
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            break
        pid = int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))
    return seen


def sending_after_the_first_chunk(events: list[dict[str, t.Any]]) -> bool:
    """Trigger: one of this test's ssh processes carries a chunk of the send at an offset other than 0,
    so the first chunk (16 MiB) is on the device and the rest is not."""
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if not argv or not argv[0].endswith(b"ssh"):
            continue
        match = _PUT_AT.search(b" ".join(argv))
        if match and int(match.group(1)) > 0 and me in _ancestors(int(entry)):
            return True
    return False


#: the slow link of the cut send: the whole archive crosses loopback in well under a second, faster
#: than the trigger sees the second chunk's ssh, so that run's ssh gets its standard input (what
#: ControlMaster reads the chunks from) at this rate
SLOW_LINK_BYTES_PER_S = 4 << 20

_THROTTLE = """
import sys, time
rate, src, dst = int(sys.argv[1]), sys.stdin.buffer, sys.stdout.buffer
start, sent = time.monotonic(), 0
while True:
    block = src.read1(65536)
    if not block:
        break
    dst.write(block)
    dst.flush()
    sent += len(block)
    ahead = sent / rate - (time.monotonic() - start)
    if ahead > 0:
        time.sleep(ahead)
"""


def slow_ssh(workdir: Path) -> Path:
    """An ssh executable for Ansible (ansible_ssh_executable) whose standard input is throttled."""
    throttle = workdir / "throttle.py"
    throttle.write_text(_THROTTLE)
    wrapper = workdir / "slow-ssh"
    # ssh is the wrapper (exec): Ansible waits for it alone, not for the throttle, which reads a
    # standard input Ansible may keep open until the command ends
    wrapper.write_text(f"#!/bin/bash\nexec {shlex.quote(str(shutil.which('ssh')))} \"$@\" "
                       f"< <(exec {shlex.quote(sys.executable)} {shlex.quote(str(throttle))} {SLOW_LINK_BYTES_PER_S})\n")
    wrapper.chmod(0o755)
    return wrapper


def settled_part(steps: prep.Steps) -> tuple[str, int]:
    """The partial copy on the device once it stops growing (the killed send's last bytes landed)."""
    last: tuple[str, int] | None = None
    listing = ""
    for _attempt in range(30):
        listing = steps.lab.sh(steps.host, 'cd "$1" && ls -la; for f in *.part; do [ -f "$f" ] && echo "PART $f $(wc -c < "$f")"; done; true', IMAGE_DIR)
        parts = [line.split()[1:] for line in listing.splitlines() if line.startswith("PART ")]
        now = (parts[0][0], int(parts[0][1])) if len(parts) == 1 else None
        if now is not None and now == last:
            return now
        last = now
        time.sleep(1)
    raise AssertionError(f"the partial copy did not settle: {last}; {IMAGE_DIR}: {listing}")


def test_a_send_cut_mid_way_is_resumed_by_the_next_run_and_the_update_completes(steps: prep.Steps, cache: Path) -> None:
    release = steps.release(TARGET)
    name = saved_name(release["image_id"])
    archive = cache / name
    assert archive.is_file(), "the controller holds the verified archive (an earlier test got it)"
    size = archive.stat().st_size
    assert size > 2 * 16 * 1024 * 1024, "the image takes more than two chunks: a cut after the first leaves the rest"
    # the device as before the update: the running OS's hooks put the env back, the inactive hostapp is not stamped
    steps.lab.sh(steps.host, "DURING_UPDATE=0 hostapp-update-hooks >/dev/null 2>&1; rm -f /mnt/sysroot/inactive/.osfleet-release.json; sync")
    assert device(steps)["files"] == [] and device(steps)["stamp"] is None
    # the controller is killed while the second chunk is on its way
    run = steps.play([push("fetch", cache)], trigger=sending_after_the_first_chunk, on_trigger=kill_controller,
                     extra_vars={"ansible_ssh_executable": str(slow_ssh(steps.workdir))})
    assert run.triggered_at is not None and run.rc != 0, run.summary()
    part, have = settled_part(steps)
    assert 16 * 1024 * 1024 <= have < size, (part, have, size)
    with archive.open("rb") as handle:
        prefix = hashlib.sha256(handle.read(have)).hexdigest()
    assert steps.lab.sh(steps.host, 'head -c "$2" "$1" | sha256sum', f"{IMAGE_DIR}/{part}", str(have)).split()[0] == prefix, \
        "the partial copy is a prefix of the archive"

    rerun = steps.play([push("fetch", cache), push("rootfs", cache)])
    assert rerun.rc == 0, rerun.summary()
    fetch, rootfs = steps.results(rerun)
    assert fetch.changed and fetch.result["bytes"] == size - have < size, (fetch.result["bytes"], have, size)
    assert f"sent the remaining {size - have} of its {size} bytes to {IMAGE_DIR}/{name} (resuming a partial copy of {have} bytes)" \
        in fetch.result["actions"], fetch.result["actions"]
    assert f"verified {IMAGE_DIR}/{name} on the device (config = image id, every layer = its diff_id)" in fetch.result["actions"]
    assert fetch.result["saved_image"] == f"{IMAGE_DIR}/{name}"
    assert rootfs.changed and rootfs.result["mode"] == "hostapp"
    after = device(steps)
    assert after["flag"] == "-f" and after["job_image"] == f"{IMAGE_DIR}/{name}", "hostapp-update loaded the resumed image"
    assert after["image"] == release["image_id"] and after["stamp"]["image_id"] == release["image_id"]
    assert "resin_root_part=3" in after["uenv"] and "upgrade_available=1" in after["uenv"]
    assert after["files"] == [], "neither the saved image nor a partial copy is left"

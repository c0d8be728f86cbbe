# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The hostapp writer on a balenaOS lab device (issue 9): fetch and rootfs, one by one.

On a balenaos-profile device (root partitions hold hostapps, / is an overlay of the active
hostapp's layers) the fetch step transfers nothing ahead and the rootfs step runs the device's own
``hostapp-update -i REF`` (the delta first), detached from the SSH session: the new hostapp is the
target image (by its image id), the new OS's hooks armed the bootloader for it, the stamp names it;
a second run changes nothing. A controller killed while hostapp-update runs leaves it running; the
next run takes it over (attaches or verifies what it wrote) instead of writing the partition again.
A power cut during hostapp-update boots the old OS, data intact, and the next run writes it.
"""

from __future__ import annotations

import json
import time
import typing as t

import pytest
import test_steps_prepare as prep
from osfleet_harness import Lab, kill_controller

LAB_PREFIX = "itha"
LAB_DEVICES = 1
LAB_PROFILE = "balenaos"
SOURCE, TARGET = prep.SOURCE, prep.TARGET
JOB = "/run/osfleet/hostapp-update"
DATA_FILE = "/mnt/data/osfleet-hostapp-test.bin"
HOLDER = "/run/osfleet-test-holder.pid"

# the inactive partition's hostapp: its current container and that container's image
HOSTAPP = r"""
c=$(readlink /mnt/sysroot/inactive/current 2>/dev/null) || c=""
cid=${c##*/}
img=$(jq -r .Image "/mnt/sysroot/inactive/balena/containers/$cid/config.v2.json" 2>/dev/null) || img=""
jq -n --arg current "$c" --arg image "$img" --arg stamp "$(cat /mnt/sysroot/inactive/.osfleet-release.json 2>/dev/null)" \
  --arg uenv "$(cat /mnt/boot/resinOS_uEnv.txt)" --arg root "$(awk '$2=="/" {print $3}' /proc/mounts)" \
  --arg started "$(cat /run/osfleet/hostapp-update/started 2>/dev/null)" \
  --arg version "$(sed -n 's/^VERSION="\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' /etc/os-release)" \
  '{current: $current, image: $image, stamp: (if $stamp == "" then null else ($stamp | fromjson) end), uenv: $uenv, root_fs: $root,
    started: $started, version: $version}'
"""


@pytest.fixture(scope="module")
def steps(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> prep.Steps:
    return prep.Steps(lab, tmp_path_factory.mktemp("hostapp"))


def device(steps: prep.Steps) -> dict[str, t.Any]:
    return t.cast(dict[str, t.Any], json.loads(steps.lab.sh(steps.host, HOSTAPP)))


def undo_hooks(steps: prep.Steps) -> None:
    """What a rescue does on a hostapp device: the running OS's hooks put its boot files and env back."""
    steps.lab.sh(steps.host, "DURING_UPDATE=0 hostapp-update-hooks >/dev/null 2>&1")


def write_steps() -> list[dict[str, t.Any]]:
    return [prep.release_step("fetch"), prep.release_step("rootfs")]


def rootfs_started(steps: prep.Steps) -> t.Callable[[list[dict[str, t.Any]]], bool]:
    """Trigger: the play's rootfs task started on the device."""
    return lambda events: any(e["event"] == "start" and e["host"] == steps.host and "osfleet.hup.rootfs" in e["task"] for e in events)


def when_hostapp_update_runs(steps: prep.Steps, then: t.Callable[[t.Any], None]) -> t.Callable[[t.Any], None]:
    """on_trigger: wait (bounded) until the rootfs step's hostapp-update runs on the device, then ``then(proc)``."""
    def act(proc: t.Any) -> None:
        for _attempt in range(300):
            if steps.lab.sh(steps.host, '[ -f "$1/pid" ] && [ ! -f "$1/status" ] && echo yes || echo no', JOB).strip() == "yes":
                break
            time.sleep(0.1)
        else:
            raise AssertionError("hostapp-update never started on the device")
        then(proc)
    return act


def test_rootfs_writes_the_target_with_the_devices_own_hostapp_update(steps: prep.Steps) -> None:
    before = device(steps)
    assert before["root_fs"] == "overlay" and before["version"] == SOURCE and before["current"] == ""
    run = steps.play(write_steps())
    assert run.rc == 0, run.summary()
    fetch, rootfs = steps.results(run)
    release = steps.release(TARGET)
    delta = next(d for d in release["deltas"] if d["from"] == SOURCE)
    # nothing fetched ahead: hostapp-update pulls the delta itself
    assert not fetch.changed and fetch.result["writer"] == "hostapp" and fetch.result["bytes"] == 0
    assert fetch.result["source"] == "delta" and fetch.result["digest"] == delta["digest"]
    assert rootfs.changed and rootfs.result["writer"] == "hostapp" and rootfs.result["mode"] == "hostapp"
    assert rootfs.result["source"] == "delta" and rootfs.result["bytes"] == delta["size"]
    assert [a["kind"] for a in rootfs.result["attempts"]] == ["delta"] and rootfs.result["attempts"][0]["ok"]
    after = device(steps)
    # the new hostapp is the target image, hostapp-update's hooks armed the env for it, the stamp names it
    assert after["current"].startswith("hostapps/") and after["image"] == release["image_id"]
    assert "resin_root_part=3" in after["uenv"] and "upgrade_available=1" in after["uenv"]
    assert after["stamp"]["digest"] == release["digest"] and after["stamp"]["image_id"] == release["image_id"]
    assert after["stamp"]["writer"] == "hostapp" and after["stamp"]["source"] == "delta"
    assert after["version"] == SOURCE, "the running OS is untouched"
    log = steps.lab.read(steps.host, f"{JOB}/log")
    assert "New/Forward hooks (new os container) ran successfully." in log

    again = steps.play(write_steps())
    assert again.rc == 0, again.summary()
    assert [r.changed for r in steps.results(again)] == [False, False]
    assert device(steps)["started"] == after["started"], "hostapp-update did not run again"


def test_a_killed_controller_leaves_hostapp_update_running_and_the_next_run_takes_it_over(steps: prep.Steps) -> None:
    undo_hooks(steps)
    assert "upgrade_available=0" in device(steps)["uenv"]
    run = steps.play([prep.release_step("rootfs")], trigger=rootfs_started(steps),
                     on_trigger=when_hostapp_update_runs(steps, kill_controller))
    assert run.triggered_at is not None and run.rc != 0
    started = device(steps)["started"]
    assert started, "the killed run had started hostapp-update"
    rerun = steps.play([prep.release_step("rootfs")])
    assert rerun.rc == 0, rerun.summary()
    (rootfs,) = steps.results(rerun)
    assert rootfs.changed
    assert any("attached" in a or "took over" in a for a in rootfs.result["actions"]), rootfs.result["actions"]
    after = device(steps)
    assert after["started"] == started, "the partition was not written a second time"
    assert after["image"] == steps.release(TARGET)["image_id"] and after["stamp"]["image_id"] == after["image"]
    assert "upgrade_available=1" in after["uenv"]


def test_the_stamp_waits_for_the_writer_lock_that_an_ended_job_still_holds(steps: prep.Steps) -> None:
    """A job's last process can hold the writer lock for a moment after it wrote its status: the
    next run, which found the job ended and the target written, must wait for it rather than refuse
    to stamp (a CI failure of the killed-controller test above; a holder that lets go after 4 s
    stands for that moment here). A holder that does not let go is named in the refusal."""
    # the state the killed run leaves: the target written and armed by the job, which ended well, no stamp
    assert device(steps)["image"] == steps.release(TARGET)["image_id"]
    assert steps.lab.sh(steps.host, 'cat "$1/status"', JOB).strip() == "0"
    steps.lab.sh(steps.host, 'rm -f /mnt/sysroot/inactive/.osfleet-release.json && sync')
    # a process that takes the writer lock and holds it for $1 seconds (its pid in HOLDER); returns once it holds it
    hold = ('setsid sh -c \'echo "$$" > "$2" && exec 8>/run/osfleet/writer.lock && flock 8 && exec sleep "$1"\' holder "$1" "$2"'
            ' </dev/null >/dev/null 2>&1 &'
            ' for _ in $(seq 1 50); do ( flock -n 9 ) 9>>/run/osfleet/writer.lock || exit 0; sleep 0.1; done; exit 1')
    steps.lab.sh(steps.host, hold, "4", HOLDER)
    run = steps.play([prep.release_step("rootfs")])
    assert run.rc == 0, run.summary()
    (rootfs,) = steps.results(run)
    assert rootfs.changed and any("took over" in a for a in rootfs.result["actions"]), rootfs.result["actions"]
    assert device(steps)["stamp"]["image_id"] == steps.release(TARGET)["image_id"]

    # a holder that stays past the wait: refused, naming it, nothing stamped
    steps.lab.sh(steps.host, 'rm -f /mnt/sysroot/inactive/.osfleet-release.json && sync')
    steps.lab.sh(steps.host, hold, "60", HOLDER)
    try:
        run = steps.play([prep.release_step("rootfs")])
        assert run.rc != 0
        assert "another fetch or root write is still running on the device" in run.stdout and "held by pid" in run.stdout, run.summary()
        refusal = next(line for line in run.stdout.splitlines() if "held by" in line)
        assert "(sleep 60)" in refusal and "set -u" not in refusal, refusal  # the holder, not the refusing script
        assert device(steps)["stamp"] is None
    finally:
        steps.lab.sh(steps.host, 'kill "$(cat "$1")"; rm -f "$1"', HOLDER)
    run = steps.play([prep.release_step("rootfs")])
    assert run.rc == 0, run.summary()
    assert device(steps)["stamp"]["image_id"] == steps.release(TARGET)["image_id"]


def test_a_power_cut_during_hostapp_update_boots_the_old_os_and_the_next_run_writes_it(steps: prep.Steps) -> None:
    undo_hooks(steps)
    steps.lab.sh(steps.host, 'head -c 65536 /dev/urandom > "$1" && sync', DATA_FILE)
    data = steps.lab.sh(steps.host, 'sha256sum "$1"', DATA_FILE)

    def cut(proc: t.Any) -> None:
        steps.lab.powercut(steps.host)
        kill_controller(proc)

    run = steps.play([prep.release_step("rootfs")], trigger=rootfs_started(steps), on_trigger=when_hostapp_update_runs(steps, cut))
    assert run.triggered_at is not None and run.rc != 0
    steps.lab.poweron(steps.host)
    booted = device(steps)
    assert booted["version"] == SOURCE and booted["root_fs"] == "overlay"
    assert steps.lab.state(steps.host).active_root == "resin-rootA"
    assert steps.lab.sh(steps.host, 'sha256sum "$1"', DATA_FILE) == data
    assert booted["stamp"] is None, "a partition cut mid-write carries no stamp"
    rerun = steps.play(write_steps())
    assert rerun.rc == 0, rerun.summary()
    after = device(steps)
    assert after["image"] == steps.release(TARGET)["image_id"] and after["stamp"]["image_id"] == after["image"]
    assert "resin_root_part=3" in after["uenv"] and "upgrade_available=1" in after["uenv"]


def test_the_watchdog_puts_the_env_back_when_the_controller_dies_during_hostapp_update(steps: prep.Steps) -> None:
    """The new OS's hooks arm the env while hostapp-update runs: a controller gone from then on must
    not leave the device to switch at its next power cycle with nobody watching. The run's watchdog
    waits for the job, then runs the running OS's hooks."""
    undo_hooks(steps)
    steps.lab.sh(steps.host, 'rm -f /mnt/sysroot/inactive/.osfleet-release.json && sync')
    run_id = "hostapp-watchdog-1"
    tasks = [prep.step("lock", state="present", owner=prep.OWNER, run_id=run_id, target_version=TARGET, watchdog_timeout=8, watchdog_interval=1),
             prep.release_step("rootfs", run_id=run_id)]
    run = steps.play(tasks, trigger=rootfs_started(steps), on_trigger=when_hostapp_update_runs(steps, kill_controller))
    assert run.triggered_at is not None and run.rc != 0
    fired = ""
    for _attempt in range(120):  # the job ends, then the bound passes (bounded: 120 s)
        fired = steps.lab.sh(steps.host, 'cat /run/osfleet/watchdog/fired 2>/dev/null; true').strip()
        if "the lock records the run as interrupted" in fired:  # its last word: it has done its part
            break
        time.sleep(1)
    assert fired, "the watchdog never fired"
    after = device(steps)
    assert "resin_root_part=2" in after["uenv"] and "upgrade_available=0" in after["uenv"], (fired, after["uenv"])
    assert after["version"] == SOURCE
    # the run resumes: its lock records the interruption; release it for the next tests
    steps.play([prep.step("lock", state="absent", owner=prep.OWNER, run_id=run_id)])

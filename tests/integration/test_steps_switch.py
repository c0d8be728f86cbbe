# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The switch steps (bootfiles, bootenv, reboot, health) with ansible-playbook on one lab device.

These tests do not use the rootfs step. They stage a release on the inactive root by hand: a copy of
the active root with another VERSION, other boot files in /resin-boot and a stamp. The tests
are one story on one device and run in file order. Every outcome is read from the device itself.

1. ``--check --diff`` changes nothing and shows the plan and the env diff;
2. the space check fails before anything is written;
3. bootfiles copies the new boot files and keeps back the device's own (byte-identical);
4. arm, reboot into the other root, commit (rollback-stop), with second runs changing nothing;
5. a failing health command rolls back and the device boots its old root again;
6. bootenv rolled_back before the reboot disarms and restores the boot files;
7. an OS that cannot boot: the bootloader falls back and health reports ``altboot``.
"""

from __future__ import annotations

import json
import typing as t
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from osfleet_harness import Lab, PlaybookRun

LAB_PREFIX = "itswitch"
LAB_DEVICES = 1
SOURCE, FIRST, SECOND, BROKEN = "2.88.4", "2.113.0", "2.114.0", "2.115.0"
DIGESTS = {v: "sha256:" + c * 64 for v, c in ((FIRST, "1"), (SECOND, "2"), (BROKEN, "3"))}
KEEP_BACK = ("config.json", "config.txt", "splash/balena-logo.png", "extra_uEnv.txt")
BREADCRUMBS = ("rollback-health-breadcrumb", "rollback-altboot-breadcrumb", "rollback-health-variables")

# $1 version, $2 digest, $3 "broken" for an OS that cannot boot. A copy of the active root with
# another version, changed boot files (kernel, config.txt and logo from the OS, a new overlay)
# and a stamp written last.
STAGE = r"""
set -eu
I=/mnt/sysroot/inactive
find "$I" -mindepth 1 -maxdepth 1 -exec rm -rf {} +
tar -C /mnt/sysroot/active --one-file-system -cf - . | tar -C "$I" -xf -
rm -f "$I/.osfleet-release.json"
sed -i -e "s/^VERSION=.*/VERSION=\"$1\"/" -e "s/^VERSION_ID=.*/VERSION_ID=\"$1\"/" \
    -e "s/^META_BALENA_VERSION=.*/META_BALENA_VERSION=\"$1\"/" "$I/etc/os-release"
printf 'kernel of %s\n' "$1" >> "$I/resin-boot/bzImage"
printf 'overlay of %s\n' "$1" > "$I/resin-boot/overlays/new-$1.dtbo"
printf 'config.txt of %s\n' "$1" > "$I/resin-boot/config.txt"
printf 'logo of %s\n' "$1" >> "$I/resin-boot/splash/balena-logo.png"
if [ "${3:-}" = broken ]; then printf '#!/bin/sh\necho "OSFLEET-BOOT-FAIL %s"\nexit 1\n' "$1" > "$I/sbin/init"; fi
printf '{"device_type":"genericx86-64-ext","version":"%s","digest":"%s","source":"test","written_at":"%s"}\n' \
    "$1" "$2" "2026-01-01T00:00:00Z" > "$I/.osfleet-release.json.tmp"
mv "$I/.osfleet-release.json.tmp" "$I/.osfleet-release.json"
sync
"""

# Everything these steps can change, in one round trip.
SNAPSHOT = r"""
cd /mnt/boot && find . -type f | sort | while IFS= read -r f; do sha256sum "$f"; done
cd /mnt/state && find . -maxdepth 1 -type f | sort | while IFS= read -r f; do sha256sum "$f"; done
echo "boot id $(cat /proc/sys/kernel/random/boot_id)"
"""


def stage(lab: Lab, host: str, version: str, broken: bool = False) -> None:
    lab.sh(host, STAGE, version, DIGESTS[version], "broken" if broken else "", timeout=120)


def env(lab: Lab, host: str) -> dict[str, str]:
    state = lab.state(host)
    return state.env


def boot_files(lab: Lab, host: str) -> dict[str, str]:
    return lab.sha256_tree(host, "/mnt/boot", exclude=("lost+found",))


def payload(lab: Lab, host: str, root: str) -> dict[str, str]:
    return lab.sha256_tree(host, f"/mnt/sysroot/{root}/resin-boot")


def state_files(lab: Lab, host: str) -> set[str]:
    return set(lab.sh(host, "ls -1 /mnt/state").split())


@pytest.fixture
def play(lab: Lab, tmp_path: Path, ansible_playbook: Callable[..., PlaybookRun]) -> Callable[..., PlaybookRun]:
    """``play(tasks, *ansible_args)``: run one play of ``tasks`` on the lab device."""
    counter = iter(range(1, 100))

    def run(tasks: list[dict[str, t.Any]], *args: str) -> PlaybookRun:
        path = tmp_path / f"play-{next(counter)}.yml"
        path.write_text(yaml.safe_dump([{"name": "switch steps", "hosts": "all", "gather_facts": False, "tasks": tasks}], sort_keys=False))
        return ansible_playbook(lab, *args, playbook=str(path), timeout=600)

    return run


@pytest.fixture(scope="module")
def host(lab: Lab) -> str:
    name = lab.hosts[0]
    state = lab.state(name)
    assert (state.version, state.active_root) == (SOURCE, "resin-rootA"), "the lab should start on 2.88.4 from resin-rootA"
    stage(lab, name, FIRST)
    return name


def task(module: str, ignore_errors: bool = False, **args: t.Any) -> dict[str, t.Any]:
    return {"name": module, f"osfleet.hup.{module}": args or None, **({"ignore_errors": True} if ignore_errors else {})}


def ok(run: PlaybookRun) -> PlaybookRun:
    assert run.rc == 0 and not run.failures(), run.summary()
    return run


UPDATE = [task("bootfiles"), task("bootenv", state="armed"), task("reboot", timeout=120), task("health", expected_version=FIRST, device_timeout=60)]


# --- 1. check mode -------------------------------------------------------------------------------

def test_check_diff_changes_nothing_and_shows_the_plan(lab: Lab, host: str, play: Callable[..., PlaybookRun]) -> None:
    before = lab.sh(host, SNAPSHOT)
    run = ok(play(UPDATE, "--check", "--diff"))
    assert lab.sh(host, SNAPSHOT) == before, "--check changed the device"
    bootfiles = run.step(host, "osfleet.hup.bootfiles")
    assert bootfiles.changed and "bzImage" in bootfiles.result["copied"]
    assert "config.txt" in bootfiles.result["kept_back"]
    old, new = boot_files(lab, host)["bzImage"], payload(lab, host, "inactive")["bzImage"]
    assert f"bzImage  {old}" in bootfiles.result["diff"]["before"] and f"bzImage  {new}" in bootfiles.result["diff"]["after"]
    bootenv = run.step(host, "osfleet.hup.bootenv")
    assert bootenv.changed and bootenv.result["actions"]
    assert "resin_root_part=2\nupgrade_available=0" in bootenv.result["diff"]["before"]
    assert "resin_root_part=3\nupgrade_available=1" in bootenv.result["diff"]["after"]
    assert "+resin_root_part=3" in run.stdout, "the env diff should be printed"
    # after the reboot the device's own rollback-health commits while the step waits: no change of its own
    health = run.step(host, "osfleet.hup.health")
    assert not health.changed and any("rollback-health" in a for a in health.result["actions"]), health.result


# --- 2. space check ------------------------------------------------------------------------------

def test_space_check_failure_writes_nothing(lab: Lab, host: str, play: Callable[..., PlaybookRun]) -> None:
    free_kib = int(lab.sh(host, "df -Pk /mnt/boot | awk 'NR==2 {print $4}'"))
    filler_kib = free_kib - 1024  # leaves 1 MiB: less than the new kernel (1.6 MiB) + the 512 KiB reserve
    lab.sh(host, 'dd if=/dev/zero of=/mnt/boot/filler bs=1024 count="$1" 2>/dev/null && sync', str(filler_kib))
    try:
        before = boot_files(lab, host)
        run = play([task("bootfiles")])
        assert run.rc != 0
        (failure,) = run.failures(host)
        assert "boot partition too small: needs " in failure.result["msg"]
        assert "KiB free (keeps 512 KiB reserve)" in failure.result["msg"]
        assert boot_files(lab, host) == before, "the failed space check wrote something"
    finally:
        lab.sh(host, "rm -f /mnt/boot/filler && sync")


# --- 3. boot files -------------------------------------------------------------------------------

def test_bootfiles_keeps_back_the_devices_files(lab: Lab, host: str, play: Callable[..., PlaybookRun]) -> None:
    before = boot_files(lab, host)
    new = payload(lab, host, "inactive")
    run = ok(play([task("bootfiles"), task("bootfiles")]))
    first, second = run.step(host, "osfleet.hup.bootfiles", 0), run.step(host, "osfleet.hup.bootfiles", 1)
    assert first.changed and not second.changed and second.result["actions"] == []
    after = boot_files(lab, host)
    for name in KEEP_BACK:
        assert after[name] == before[name], f"kept-back {name} changed"
    assert new["config.txt"] != before["config.txt"], "the payload's config.txt differs: the keep-back is tested"
    copied = {n: d for n, d in new.items() if n not in KEEP_BACK and n != "balenaos.fingerprint"}
    assert {n: after.get(n) for n in copied} == copied
    assert f"overlays/new-{FIRST}.dtbo" in after
    assert not [n for n in after if n.endswith(".osfleet-tmp")]
    assert after["balenaos.fingerprint"] != before["balenaos.fingerprint"]


# --- 4. arm, reboot, commit ----------------------------------------------------------------------

def test_arm_reboot_commit(lab: Lab, host: str, play: Callable[..., PlaybookRun]) -> None:
    conf = lab.read(host, "/mnt/state/rollback-health.conf")
    # the device's own rollback-health waits long, so that the health step commits (not the device)
    lab.sh(host, 'printf "ROLLBACK_INITIAL_WAIT=300\\nROLLBACK_INTERVAL=1\\nROLLBACK_COUNT=3\\n" > /mnt/state/rollback-health.conf && sync')
    try:
        old = lab.state(host)
        run = ok(play([task("bootenv", state="armed", expected_digest=DIGESTS[FIRST]), task("bootenv", state="armed")]))
        assert run.step(host, "osfleet.hup.bootenv", 0).changed and not run.step(host, "osfleet.hup.bootenv", 1).changed
        armed = lab.state(host)
        assert armed.env == {"resin_root_part": "3", "upgrade_available": "1"}, "armed with the count reset (bootcount.env removed)"
        assert set(BREADCRUMBS) <= set(armed.markers)
        assert lab.read(host, "/mnt/state/rollback-health-variables") == "BALENAOS_ROLLBACK_VPNONLINE=0\n"

        run = ok(play([task("reboot", timeout=120), task("reboot")]))
        rebooted, again = run.step(host, "osfleet.hup.reboot", 0), run.step(host, "osfleet.hup.reboot", 1)
        assert rebooted.changed and rebooted.result["rebooted"] and rebooted.result["elapsed"] > 0
        assert rebooted.result["device"]["version"] == FIRST and rebooted.result["device"]["active_root"] == "resin-rootB"
        assert not again.changed and not again.result["rebooted"]
        new = lab.state(host)
        assert (new.version, new.active_root) == (FIRST, "resin-rootB") and new.boot_id != old.boot_id
        assert new.env["upgrade_available"] == "1", "not committed yet"

        run = ok(play([task("health", expected_version=FIRST, commands=["systemctl is-active balena-supervisor"], device_timeout=3),
                       task("health", expected_version=FIRST)]))
        health, second = run.step(host, "osfleet.hup.health", 0), run.step(host, "osfleet.hup.health", 1)
        assert health.changed and health.result["committed"] and not health.result["rolled_back"]
        assert health.result["checks"][0]["rc"] == 0
        assert "diff" not in health.result or "upgrade_available=0" in str(health.result["diff"])
        assert not second.changed and second.result["committed"]
        committed = lab.state(host)
        assert committed.env == {"resin_root_part": "3", "upgrade_available": "0"}
        assert not set(BREADCRUMBS) & set(committed.markers) and committed.committed
        run = ok(play([task("bootenv", state="committed")]))
        assert not run.step(host, "osfleet.hup.bootenv").changed
    finally:
        lab.sh(host, 'systemctl stop rollback-health >/dev/null 2>&1; printf "%s" "$1" > /mnt/state/rollback-health.conf && sync', conf)


# --- 5. a failing health command rolls back --------------------------------------------------------

def test_failing_health_command_rolls_back(lab: Lab, host: str, play: Callable[..., PlaybookRun]) -> None:
    stage(lab, host, SECOND)
    ok(play([task("bootfiles"), task("bootenv", state="armed", expected_digest=DIGESTS[SECOND]), task("reboot", timeout=120)]))
    booted = lab.state(host)
    assert (booted.version, booted.active_root) == (SECOND, "resin-rootA")
    run = play([task("health", expected_version=SECOND, commands=["echo checking; exit 3"], retries=1, delay=1, reboot_timeout=120)])
    assert run.rc != 0
    (failure,) = run.failures(host)
    result = failure.result
    assert result["rolled_back"] is True and result["rollback_reason"] == "checks", result
    assert result["checks"][0]["rc"] == 3 and result["checks"][0]["attempts"] == 2 and "checking" in result["checks"][0]["stdout"]
    assert "health checks failed" in result["msg"] and "rolled back to 2.113.0 on resin-rootB" in result["msg"]
    back = lab.state(host)
    assert (back.version, back.active_root) == (FIRST, "resin-rootB") and back.boot_id != booted.boot_id
    assert back.env == {"resin_root_part": "3", "upgrade_available": "0"}
    assert not set(BREADCRUMBS) & set(back.markers)
    marker = json.loads(lab.read(host, "/mnt/state/osfleet-rollback"))
    assert marker["reason"] == "checks" and marker["to_root"] == "resin-rootB" and marker["from_version"] == SECOND
    boot, old_payload = boot_files(lab, host), payload(lab, host, "active")
    assert all(boot[n] == d for n, d in old_payload.items() if n not in KEEP_BACK and n != "balenaos.fingerprint")
    # second runs: health reports the rollback again, without touching anything; bootenv has nothing to do
    run = play([task("health", ignore_errors=True, expected_version=SECOND), task("bootenv", state="rolled_back")])
    health = run.step(host, "osfleet.hup.health")
    assert health.failed and not health.changed and health.result["rollback_reason"] == "checks"
    assert not run.step(host, "osfleet.hup.bootenv").changed


# --- 6. rolled_back before the reboot --------------------------------------------------------------

def test_rolled_back_before_the_reboot(lab: Lab, host: str, play: Callable[..., PlaybookRun]) -> None:
    before = boot_files(lab, host)
    run = ok(play([task("bootfiles"), task("bootenv", state="armed"), task("bootenv", state="rolled_back"),
                   task("bootenv", state="rolled_back"), task("reboot")]))
    assert run.step(host, "osfleet.hup.bootenv", 0).result["boot_env"]["resin_root_part"] == 2
    rolled, again = run.step(host, "osfleet.hup.bootenv", 1), run.step(host, "osfleet.hup.bootenv", 2)
    assert rolled.changed and rolled.result["rollback_to"]["root"] == "resin-rootB" and "bzImage" in rolled.result["restored"]
    assert not again.changed
    assert not run.step(host, "osfleet.hup.reboot").changed, "nothing pending after the rollback"
    state = lab.state(host)
    assert state.env == {"resin_root_part": "3", "upgrade_available": "0"} and state.committed
    after = boot_files(lab, host)
    assert after["bzImage"] == before["bzImage"], "the booted root's kernel is back"
    assert json.loads(lab.read(host, "/mnt/state/osfleet-rollback"))["reason"] == "requested"


# --- 7. an OS that cannot boot ---------------------------------------------------------------------

def test_unbootable_os_falls_back_and_health_reports_altboot(lab: Lab, host: str, play: Callable[..., PlaybookRun]) -> None:
    stage(lab, host, BROKEN, broken=True)
    ok(play([task("bootfiles"), task("bootenv", state="armed", expected_digest=DIGESTS[BROKEN]), task("reboot", timeout=180)]))
    run = play([task("health", expected_version=BROKEN, device_timeout=180)])
    (failure,) = run.failures(host)
    assert failure.result["rolled_back"] is True and failure.result["rollback_reason"] == "altboot", failure.result
    assert "the new OS did not boot" in failure.result["msg"]
    state = lab.state(host)
    assert (state.version, state.active_root) == (FIRST, "resin-rootB")
    assert state.env["resin_root_part"] == "3" and state.env["upgrade_available"] == "0"
    assert "rollback-altboot-triggered" in state.markers

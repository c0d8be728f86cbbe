# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The switch steps after rootfs on a balenaOS (hostapp) lab device: the new OS's hostapp-update hooks
switch it, the collection verifies and never writes (issue #9).

The rootfs step is emulated: the device's own ``hostapp-update -i <registry>/<repo>@<digest>`` of
2.113.0 (which runs the new OS's hooks), then the release stamp written as the rootfs step writes
it. One device, one story, in file order:

1. after hostapp-update, bootfiles and bootenv armed report changed=false, verify the hooks'
   work and write nothing (the lock step recorded the keep-back files before);
2. a damaged keep-back file, or an env the hooks did not arm: they fail naming it, nothing written;
3. bootenv rolled_back puts the running OS's boot files and env back with its own hooks;
4. the run's watchdog, told by bootenv armed, does the same when the controller goes away;
5. after the reboot, health waits for the device's own rollback-health: at its device_timeout it
   fails instead of committing, then it reports the device's commit; without the breadcrumb (nobody
   else commits) health and bootenv committed commit and run the running OS's commit hooks, a
   failing commit hook is reported;
6. a failing health command rolls back with the previous OS's own hooks (rollback-health's way).
"""

from __future__ import annotations

import json
import time
import typing as t
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from osfleet_harness import Lab, PlaybookRun

LAB_PREFIX = "ithapsw"
LAB_DEVICES = 1
LAB_PROFILE = "balenaos"
SOURCE, TARGET = "2.88.4", "2.113.0"
KEEP_BACK = ("config.json", "config.txt", "splash/balena-logo.png", "extra_uEnv.txt")
BREADCRUMBS = ("rollback-health-breadcrumb", "rollback-altboot-breadcrumb", "rollback-health-variables")
HOOKS_DID_NOT = "wrote nothing (on a balenaOS device the hooks do the switch, the collection only verifies it)"
HOOKS_LOG = "/mnt/data/balenahup/hostapp-update-hooks.log"

# $1 the image reference, $2 the stamp (JSON): what the hostapp writer's rootfs step does on the device
HOSTAPP_UPDATE = r"""
set -eu
hostapp-update -i "$1" >/dev/null
printf '%s\n' "$2" > /mnt/sysroot/inactive/.osfleet-release.json.tmp
mv /mnt/sysroot/inactive/.osfleet-release.json.tmp /mnt/sysroot/inactive/.osfleet-release.json
sync
"""

# The /resin-boot of the inactive hostapp (under the mount its init makes) and of the running OS
PAYLOADS = r"""
S=/mnt/sysroot/inactive
m=$("$S/current/boot/init" -sysroot "$S")
(cd "$m/resin-boot" && find . -type f | sort | while IFS= read -r f; do echo "inactive $(sha256sum "$f")"; done)
umount "$m"
(cd /resin-boot && find . -type f | sort | while IFS= read -r f; do echo "active $(sha256sum "$f")"; done)
"""

# Everything these steps can change, in one round trip.
SNAPSHOT = r"""
cd /mnt/boot && find . -type f | sort | while IFS= read -r f; do sha256sum "$f"; done
cd /mnt/state && find . -maxdepth 1 -type f | sort | while IFS= read -r f; do sha256sum "$f"; done
grep -c merged /proc/mounts || true
"""


def task(module: str, ignore_errors: bool = False, **args: t.Any) -> dict[str, t.Any]:
    return {"name": module, f"osfleet.hup.{module}": args or None, **({"ignore_errors": True} if ignore_errors else {})}


def ok(run: PlaybookRun) -> PlaybookRun:
    assert run.rc == 0 and not run.failures(), run.summary()
    return run


def boot_files(lab: Lab, host: str) -> dict[str, str]:
    return lab.sha256_tree(host, "/mnt/boot", exclude=("lost+found",))


def payloads(lab: Lab, host: str) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {"active": {}, "inactive": {}}
    for line in lab.sh(host, PAYLOADS).splitlines():
        side, digest, name = line.split(None, 2)
        out[side][name.removeprefix("./")] = digest
    return out


def copied(payload: dict[str, str]) -> dict[str, str]:
    """The payload files the hooks copy (not kept back, not the fingerprint)."""
    return {n: d for n, d in payload.items() if n not in KEEP_BACK and n != "balenaos.fingerprint"}


def hostapp_update(lab: Lab, host: str) -> None:
    rel = lab.release(TARGET)
    ref = f"{lab.catalog()['registries']['primary']}/{rel['repository']}@{rel['digest']}"
    stamp = {"device_type": rel["device_type"], "version": TARGET, "digest": rel["digest"], "source": "registry",
             "written_at": "2026-12-03T00:00:00Z"}
    lab.sh(host, HOSTAPP_UPDATE, ref, json.dumps(stamp, sort_keys=True), timeout=300)


@pytest.fixture
def play(lab: Lab, tmp_path: Path, ansible_playbook: Callable[..., PlaybookRun]) -> Callable[..., PlaybookRun]:
    """``play(tasks, *ansible_args)``: run one play of ``tasks`` on the lab device."""
    counter = iter(range(1, 100))

    def run(tasks: list[dict[str, t.Any]], *args: str) -> PlaybookRun:
        path = tmp_path / f"play-{next(counter)}.yml"
        path.write_text(yaml.safe_dump([{"name": "hostapp switch", "hosts": "all", "gather_facts": False, "tasks": tasks}], sort_keys=False))
        return ansible_playbook(lab, *args, playbook=str(path), timeout=600)

    return run


@pytest.fixture(scope="module")
def host(lab: Lab) -> str:
    name = lab.hosts[0]
    state = lab.state(name)
    assert (state.version, state.active_root) == (SOURCE, "resin-rootA"), "the lab should start on 2.88.4 from resin-rootA"
    assert lab.sh(name, "readlink /mnt/sysroot/active/current").startswith("hostapps/"), "not a balenaos-profile device"
    return name


@pytest.fixture(scope="module")
def before(host: str, lab: Lab) -> dict[str, str]:
    """The boot partition before any update."""
    return boot_files(lab, host)


def lock(run_id: str, state: str = "present", **kw: t.Any) -> dict[str, t.Any]:
    args = {"state": state, "run_id": run_id, **kw}
    if state == "present":
        args = {"target_version": TARGET, "watchdog_timeout": 0, **args}
    return task("lock", **args)


# --- 1. verification after the hooks -------------------------------------------------------------

def test_bootfiles_and_armed_verify_the_hooks_work_and_write_nothing(
        lab: Lab, host: str, before: dict[str, str], play: Callable[..., PlaybookRun]) -> None:
    run = ok(play([lock("hk-1")]))
    assert any("keep-back file(s) of /mnt/boot" in a for a in run.step(host, "osfleet.hup.lock").result["actions"])
    assert lab.sh(host, "cat /mnt/state/osfleet/keepback-before.sha256").count("\n") >= 3
    hostapp_update(lab, host)
    snap = lab.sh(host, SNAPSHOT)
    run = ok(play([task("bootfiles"), task("bootenv", state="armed", expected_digest=lab.release(TARGET)["digest"]), lock("hk-1", "absent")]))
    assert lab.sh(host, SNAPSHOT) == snap, "the verification wrote something (or left a mount)"
    bootfiles, armed = run.step(host, "osfleet.hup.bootfiles"), run.step(host, "osfleet.hup.bootenv")
    assert not bootfiles.changed and not armed.changed
    assert "the new OS's hostapp-update hooks copied them" in bootfiles.result["msg"], bootfiles.result
    assert "no record" not in bootfiles.result["actions"][0]
    assert "bzImage" in bootfiles.result["unchanged"] and "config.txt" in bootfiles.result["kept_back"]
    assert armed.result["msg"].startswith(f"verified the switch to resin-rootB ({TARGET}): the new OS's hostapp-update hooks armed")
    # what was verified, read independently: the hooks' copy, the keep-back files as before, the env
    boot, payload = boot_files(lab, host), payloads(lab, host)["inactive"]
    assert {n: boot.get(n) for n in copied(payload)} == copied(payload)
    assert payload["bzImage"] != before["bzImage"], "the new OS's kernel differs: the copy is tested"
    assert {n: boot[n] for n in KEEP_BACK} == {n: before[n] for n in KEEP_BACK}
    state = lab.state(host)
    assert state.env == {"resin_root_part": "3", "upgrade_available": "1"} and set(BREADCRUMBS) <= set(state.markers)


# --- 2. what the hooks did not do ------------------------------------------------------------------

def test_a_damaged_keep_back_file_or_an_unarmed_env_fails_and_changes_nothing(lab: Lab, host: str, play: Callable[..., PlaybookRun]) -> None:
    saved = lab.read(host, "/mnt/boot/config.txt")
    lab.sh(host, 'printf "# a hook that ignored the keep-back list\\n" >> /mnt/boot/config.txt && sync')
    try:
        snap = lab.sh(host, SNAPSHOT)
        run = play([task("bootfiles", ignore_errors=True), task("bootenv", ignore_errors=True, state="armed")])
        assert lab.sh(host, SNAPSHOT) == snap, "a failed verification wrote something"
        for action in ("osfleet.hup.bootfiles", "osfleet.hup.bootenv"):
            result = run.step(host, action)
            assert result.failed and not result.changed
            msg = result.result["msg"]
            assert msg.startswith(f"{host}: the new OS's hostapp-update hooks were to ") and HOOKS_DID_NOT in msg, msg
            assert "but on /mnt/boot the keep-back file config.txt has other contents than before the update" in msg, msg
    finally:
        lab.sh(host, 'printf "%s" "$1" > /mnt/boot/config.txt && sync', saved)
    lab.sh(host, 'printf "resin_root_part=3\\nupgrade_available=0\\n" > /mnt/boot/resinOS_uEnv.txt && rm -f /mnt/state/rollback-altboot-breadcrumb && sync')
    try:
        snap = lab.sh(host, SNAPSHOT)
        run = play([task("bootenv", ignore_errors=True, state="armed"), task("bootfiles")])
        assert lab.sh(host, SNAPSHOT) == snap
        result = run.step(host, "osfleet.hup.bootenv")
        assert result.failed and not result.changed
        msg = result.result["msg"]
        assert "the bootloader env is not armed (upgrade_available=0)" in msg and "missing /mnt/state/rollback-altboot-breadcrumb" in msg
        assert HOOKS_DID_NOT in msg
        assert not run.step(host, "osfleet.hup.bootfiles").changed, "the boot files are still the hooks' copy"
    finally:
        lab.sh(host, 'printf "resin_root_part=3\\nupgrade_available=1\\n" > /mnt/boot/resinOS_uEnv.txt && touch /mnt/state/rollback-altboot-breadcrumb && sync')


# --- 3. rolled_back with the running OS's hooks ------------------------------------------------------

def test_rolled_back_restores_the_running_os_with_its_hooks(lab: Lab, host: str, before: dict[str, str], play: Callable[..., PlaybookRun]) -> None:
    lab.sh(host, f": > {HOOKS_LOG}")
    run = ok(play([task("bootenv", state="rolled_back"), task("bootenv", state="rolled_back"), task("reboot")]))
    rolled, again = run.step(host, "osfleet.hup.bootenv", 0), run.step(host, "osfleet.hup.bootenv", 1)
    assert rolled.changed and "with its own hooks (DURING_UPDATE=0 hostapp-update-hooks)" in rolled.result["actions"][0]
    assert "bzImage" in rolled.result["restored"] and rolled.result["rollback_to"] == {"root": "resin-rootA", "version": SOURCE}
    assert not again.changed and again.result["actions"] == []
    assert not run.step(host, "osfleet.hup.reboot").changed, "nothing pending after the rollback"
    state = lab.state(host)
    assert state.env == {"resin_root_part": "2", "upgrade_available": "0"} and not set(BREADCRUMBS) & set(state.markers)
    boot, payload = boot_files(lab, host), payloads(lab, host)["active"]
    assert {n: boot.get(n) for n in copied(payload)} == copied(payload), "the running OS's boot files are back"
    assert {n: boot[n] for n in KEEP_BACK} == {n: before[n] for n in KEEP_BACK}
    log = lab.read(host, HOOKS_LOG)
    assert f"hooks-of={SOURCE} running-on={SOURCE} DURING_UPDATE=0" in log, log


# --- 4. the watchdog puts the env back with the running OS's hooks -------------------------------------

def test_the_watchdog_puts_the_env_back_with_the_running_os_hooks(lab: Lab, host: str, play: Callable[..., PlaybookRun]) -> None:
    hostapp_update(lab, host)
    lab.sh(host, f": > {HOOKS_LOG}")
    run_id = "hk-watchdog"
    defaults = {"run_id": run_id}
    run = ok(play([lock(run_id, watchdog_timeout=10, watchdog_interval=1), task("bootfiles", **defaults),
                   task("bootenv", state="armed", **defaults)]))
    assert run.step(host, "osfleet.hup.lock").result["watchdog"] == "started"
    armed = run.step(host, "osfleet.hup.bootenv")
    assert any("told the device-side watchdog to put the env back with the running OS's hooks" in a for a in armed.result["actions"]), armed.result
    assert lab.state(host).env == {"resin_root_part": "3", "upgrade_available": "1"}
    # the controller is gone: nothing is heard of the run any more
    deadline = time.monotonic() + 90
    fired = ""
    while time.monotonic() < deadline and "the lock records" not in fired:
        time.sleep(2)
        fired = lab.sh(host, "cat /run/osfleet/watchdog/fired 2>/dev/null || true")
    assert "put the env and boot files back for the running OS with its hooks" in fired, fired
    state = lab.state(host)
    assert state.env == {"resin_root_part": "2", "upgrade_available": "0"} and not set(BREADCRUMBS) & set(state.markers)
    assert f"hooks-of={SOURCE} running-on={SOURCE} DURING_UPDATE=0" in lab.read(host, HOOKS_LOG)
    ok(play([lock(run_id, "absent")]))


# --- 5. health waits for the device's own commit ------------------------------------------------------------

def test_health_never_commits_and_reports_the_devices_commit(lab: Lab, host: str, play: Callable[..., PlaybookRun]) -> None:
    hostapp_update(lab, host)
    conf = lab.read(host, "/mnt/state/rollback-health.conf")
    # rollback-health waits 25 s before its tests: the first health run's device_timeout ends before it commits
    lab.sh(host, 'printf "ROLLBACK_INITIAL_WAIT=25\\nROLLBACK_INTERVAL=1\\nROLLBACK_COUNT=3\\n" > /mnt/state/rollback-health.conf && sync')
    try:
        run = ok(play([task("bootfiles"), task("bootenv", state="armed"), task("reboot", timeout=180)]))
        assert run.step(host, "osfleet.hup.reboot").result["device"]["active_root"] == "resin-rootB"
        run = play([task("health", ignore_errors=True, expected_version=TARGET, device_timeout=5)])
        early = run.step(host, "osfleet.hup.health")
        assert early.failed and not early.changed, early.result
        assert "the device's rollback-health has not committed the update" in early.result["msg"]
        assert "the step does not commit by itself" in early.result["msg"]
        state = lab.state(host)
        assert (state.env["resin_root_part"], state.env["upgrade_available"]) == ("3", "1") and not state.committed, "the step committed"
        run = ok(play([task("health", expected_version=TARGET, device_timeout=150)]))
        health = run.step(host, "osfleet.hup.health")
        assert not health.changed and health.result["committed"] and health.result["waited"] > 2, health.result
        assert health.result["committed_by"] == "rollback-health" and health.result["msg"] == "committed by the device's rollback-health"
        assert lab.read(host, "/run/rollback-health.state").strip().startswith("committed")
        state = lab.state(host)
        assert (state.version, state.active_root) == (TARGET, "resin-rootB") and state.committed
    finally:
        lab.sh(host, 'printf "%s" "$1" > /mnt/state/rollback-health.conf && sync', conf)


# --- 5b. a commit of the step's own runs the running OS's commit hooks --------------------------------------------

LEGACY_DB, MIGRATED_DB = "/mnt/data/resin-supervisor/database.sqlite", "/mnt/data/resin-data/resin-supervisor/database.sqlite"
# The new OS booted and armed but nobody else commits (no rollback-health breadcrumb); a legacy
# supervisor database that the forward part of 75-supervisor-db copied (run here as the update runs it)
NOT_COMMITTED = f"""
set -eu
printf 'resin_root_part=3\\nupgrade_available=1\\n' > /mnt/boot/resinOS_uEnv.txt
rm -f /mnt/state/rollback-health-breadcrumb
touch /mnt/state/rollback-altboot-breadcrumb
rm -rf /mnt/data/resin-data/resin-supervisor
mkdir -p /mnt/data/resin-supervisor
echo legacy > {LEGACY_DB}
touch -d '2026-01-01 00:00:00' {LEGACY_DB}
DURING_UPDATE=1 /etc/hostapp-update-hooks.d/75-supervisor-db/75-forward_supervisor-db >/dev/null
: > {HOOKS_LOG}
sync
"""


def test_the_steps_own_commit_runs_the_commit_hooks(lab: Lab, host: str, play: Callable[..., PlaybookRun]) -> None:
    """Nobody else commits (no rollback-health breadcrumb): health, and bootenv committed, commit with
    rollback-stop's effects and then the running OS's commit hooks (hostapp-update-hooks-v2 --commit),
    as a balenaOS device commits; 75-supervisor-db's commit part removes the legacy database; a second
    run changes nothing and runs no hooks."""
    assert (lab.state(host).version, lab.state(host).active_root) == (TARGET, "resin-rootB"), "test 5 left the device on the target"
    commit_line = f"phase=commit hooks-of={TARGET} running-on={TARGET} DURING_UPDATE=0"
    ran = "ran the running OS's commit hooks (hostapp-update-hooks-v2 --commit)"
    for module, args in (("health", {"expected_version": TARGET}), ("bootenv", {"state": "committed"})):
        lab.sh(host, NOT_COMMITTED)
        assert lab.read(host, MIGRATED_DB).strip() == "legacy", "the forward part copied the legacy database"
        run = ok(play([task(module, **args), task(module, **args)]))
        first, second = run.step(host, f"osfleet.hup.{module}", 0), run.step(host, f"osfleet.hup.{module}", 1)
        assert first.changed and first.result["actions"][-1] == ran, (module, first.result)
        hooks_run = first.result["commit_hooks"]
        assert (hooks_run["tool"], hooks_run["rc"], hooks_run["failed"], hooks_run["ok"]) == ("hostapp-update-hooks-v2", 0, [], True), hooks_run
        assert "running 75-supervisor-db/75-fwd_commit_supervisor-db" in hooks_run["output"]
        assert not second.changed and "commit_hooks" not in second.result and second.result["actions"] == [], second.result
        # the hooks ran once, on the committed device, as the device's commit runs them
        assert [" ".join(line.split()[1:]) for line in lab.read(host, HOOKS_LOG).splitlines()] == [commit_line], module
        assert lab.sh(host, "test -e /mnt/data/resin-supervisor && echo left || echo removed").strip() == "removed", module
        assert lab.read(host, MIGRATED_DB).strip() == "legacy"
        state = lab.state(host)
        assert state.env == {"resin_root_part": "3", "upgrade_available": "0"} and state.committed, module


def test_a_failing_commit_hook_is_reported_and_the_update_stays_committed(lab: Lab, host: str, play: Callable[..., PlaybookRun]) -> None:
    """75-supervisor-db's commit part cannot remove the legacy database (on a read-only mount): the step
    reports the failed hook in its msg, actions and commit_hooks, the other commit hooks ran, the device is committed."""
    lab.sh(host, NOT_COMMITTED)
    lab.sh(host, f"""set -eu
        mount -t tmpfs osfleet-ro /mnt/data/resin-supervisor
        echo legacy > {LEGACY_DB} && touch -d '2026-01-01 00:00:00' {LEGACY_DB}
        mount -o remount,ro /mnt/data/resin-supervisor""")
    try:
        run = ok(play([task("health", expected_version=TARGET)]))
    finally:
        lab.sh(host, "umount /mnt/data/resin-supervisor")
    result = run.step(host, "osfleet.hup.health")
    assert result.changed and result.result["committed"] and result.result["committed_by"] == "step"
    hook = "75-supervisor-db/75-fwd_commit_supervisor-db"
    assert result.result["commit_hooks"]["failed"] == [hook] and not result.result["commit_hooks"]["ok"], result.result
    assert f"the commit hook(s) {hook} failed; the runner went on with the others" in result.result["actions"][-1]
    assert "committed, but the running OS's commit hooks" in result.result["msg"], result.result["msg"]
    assert f"phase=commit hooks-of={TARGET}" in lab.read(host, HOOKS_LOG), "the trace commit hook ran too"
    assert lab.read(host, LEGACY_DB).strip() == "legacy"
    state = lab.state(host)
    assert state.env == {"resin_root_part": "3", "upgrade_available": "0"} and state.committed


# --- 6. a failing check rolls back with the previous OS's hooks ------------------------------------------------

def test_a_failing_check_rolls_back_with_the_previous_os_hooks(
        lab: Lab, host: str, before: dict[str, str], play: Callable[..., PlaybookRun]) -> None:
    assert (lab.state(host).version, lab.state(host).active_root) == (TARGET, "resin-rootB"), "test 5 left the device on the target"
    lab.sh(host, f": > {HOOKS_LOG}")
    run = play([task("health", expected_version=TARGET, commands=["echo checking; exit 3"], retries=0, reboot_timeout=180)])
    assert run.rc != 0
    (failure,) = run.failures(host)
    result = failure.result
    assert result["rolled_back"] is True and result["rollback_reason"] == "checks", result
    assert result["actions"][0].startswith("ran the previous OS's hooks"), result
    assert f"rolled back to {SOURCE} on resin-rootA" in result["msg"]
    state = lab.state(host)
    assert (state.version, state.active_root) == (SOURCE, "resin-rootA")
    assert state.env == {"resin_root_part": "2", "upgrade_available": "0"} and not set(BREADCRUMBS) & set(state.markers)
    marker = json.loads(lab.read(host, "/mnt/state/osfleet-rollback"))
    assert (marker["reason"], marker["from_version"], marker["to_root"]) == ("checks", TARGET, "resin-rootA")
    boot, payload = boot_files(lab, host), payloads(lab, host)["active"]
    assert {n: boot.get(n) for n in copied(payload)} == copied(payload), "the previous OS's boot files are back"
    assert {n: boot[n] for n in KEEP_BACK} == {n: before[n] for n in KEEP_BACK}
    assert f"hooks-of={SOURCE}" in lab.read(host, HOOKS_LOG) and "DURING_UPDATE=1" in lab.read(host, HOOKS_LOG)

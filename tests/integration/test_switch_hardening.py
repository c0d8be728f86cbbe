# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Issue 7 on one lab device, in file order:

1. (item 15) a release that fails health rolls back; running the update again is refused by the
   preflight, naming the rollback and its reason; with ``hup_retry_rolled_back`` it proceeds;
2. (item 7) on a nearly full boot partition the space check counts every new file beside the old
   ones (the apply script's peak): refused before anything is written where the old check let it
   through; with a little more room the copy, the switch and a health rollback all succeed;
3. (item 11) more than a thousand boot files: bootfiles, its run log entry, and the rollback that
   removes them again (each of these put a list larger than 128 KiB into one argument).

Steps 2 and 3 stage a release on the inactive root by hand, as test_steps_switch.py does.
"""

from __future__ import annotations

import typing as t
from collections.abc import Callable

from osfleet_harness import Lab, PlaybookRun, ansible_playbook
# pylint: disable-next=unused-import
from test_steps_switch import DIGESTS, FIRST, KEEP_BACK, SECOND, boot_files, ok, payload, play, stage, task  # noqa: F401 (play: a fixture)

LAB_PREFIX = "itharden"
LAB_DEVICES = 1
SOURCE, HEALTH_FAULT = "2.88.4", "2.115.0"
MANY = 1100
RUN_LOG = "/mnt/data/balenahup/osfleet-hardening.log"
FILL = 'rm -f /mnt/boot/filler && sync && dd if=/dev/zero of=/mnt/boot/filler bs=1024 count="$1" 2>/dev/null && sync'


def free_kib(lab: Lab, host: str) -> int:
    return int(lab.sh(host, "df -Pk /mnt/boot | awk 'NR==2 {print $4}'"))


# --- 1. a release that rolled back is not run again by itself ------------------------------------

def test_a_release_that_rolled_back_is_refused_until_retried(lab: Lab, tmp_path) -> None:
    host = lab.hosts[0]
    assert lab.state(host).version == SOURCE

    def update(**extra: t.Any) -> PlaybookRun:
        return ansible_playbook(lab, workdir=tmp_path / "ansible", extra_vars={"hup_target_version": HEALTH_FAULT, **extra}, timeout=900)

    first = update()
    assert first.rc != 0
    health = first.step(host, "osfleet.hup.health").result
    assert health.get("rolled_back") is True and health.get("rollback_reason") in ("health", "checks"), health
    assert lab.state(host).version == SOURCE

    again = update()
    assert again.rc != 0
    preflight = again.step(host, "osfleet.hup.preflight")
    assert preflight.failed
    msg = preflight.result["msg"]
    assert f"{HEALTH_FAULT} rolled back on this device (" in msg and "retry_rolled_back" in msg, msg
    assert ("the device's health checks failed: /mnt/state/rollback-health-triggered" in msg
            or "the health commands failed: /mnt/state/osfleet-rollback" in msg), msg
    (rolled,) = [r for r in preflight.result["device"]["rolled_back"] if r["version"] == HEALTH_FAULT]
    assert rolled["reason"] in ("health", "checks")
    assert not [r for r in again.host_results(host) if r.action in ("osfleet.hup.bootenv", "osfleet.hup.reboot")], "the refused run went on"

    retried = update(hup_retry_rolled_back=True)
    assert not retried.step(host, "osfleet.hup.preflight").failed
    for action in ("osfleet.hup.bootenv", "osfleet.hup.reboot"):
        assert any(r.changed for r in retried.host_results(host) if r.action == action), f"the retried run did not get to {action}"
    assert retried.step(host, "osfleet.hup.health").result.get("rolled_back") is True, "the faulty release rolls back again"
    assert lab.state(host).version == SOURCE


# --- 2. the space check models the apply script's peak ---------------------------------------------

BIG = "firmware/blob.bin"
#: a second large boot file (1 MiB) that the new release brings, besides its kernel
STAGE_BIG = r"""
set -e
mkdir -p /mnt/sysroot/inactive/resin-boot/firmware
head -c 1048576 /dev/urandom > /mnt/sysroot/inactive/resin-boot/firmware/blob.bin
sync
"""


def test_a_nearly_full_boot_partition(lab: Lab, play: Callable[..., PlaybookRun]) -> None:
    host = lab.hosts[0]
    stage(lab, host, FIRST)
    lab.sh(host, STAGE_BIG)
    # everything the copy writes, in KiB: the new kernel and blob, the new overlay, the fingerprint
    new = lab.sh(host, "cd /mnt/sysroot/inactive/resin-boot && cat bzImage firmware/blob.bin | wc -c")
    peak_kib = -(-int(new) // 1024) + 8
    # the old check credited the old kernel's size before the blob was counted, so it needed only
    # the new kernel beside the old one; leave room for that plus the 512 KiB reserve, but not for
    # both new files at once (the apply script writes both before it removes the old kernel)
    try:
        lab.sh(host, FILL, str(free_kib(lab, host) - (peak_kib - 1024 + 512 + 200)))
        before = boot_files(lab, host)
        run = play([task("bootfiles")])
        (failure,) = run.failures(host)
        assert "boot partition too small: needs " in failure.result["msg"] and "(keeps 512 KiB reserve)" in failure.result["msg"], failure.result
        assert boot_files(lab, host) == before, "the refused copy wrote something"

        # room for the peak and the reserve: the copy works, and so does the rollback afterwards
        lab.sh(host, FILL, str(free_kib(lab, host) + int(lab.sh(host, "du -k /mnt/boot/filler | cut -f1")) - (peak_kib + 512 + 300)))
        old = boot_files(lab, host)
        ok(play([task("bootfiles"), task("bootenv", state="armed", expected_digest=DIGESTS[FIRST]), task("reboot", timeout=120)]))
        assert lab.state(host).version == FIRST
        run = play([task("health", expected_version=FIRST, commands=["exit 3"], retries=0, reboot_timeout=120, ignore_errors=True)])
        result = run.step(host, "osfleet.hup.health").result
        assert result["rolled_back"] is True and result["rollback_reason"] == "checks", result
        state = lab.state(host)
        assert state.version == SOURCE
        after = boot_files(lab, host)
        assert after["bzImage"] == old["bzImage"] and BIG not in after, "the rollback put the old boot files back"
    finally:
        lab.sh(host, "rm -rf /mnt/boot/filler /mnt/boot/firmware && sync")


# --- 3. more than a thousand boot files -------------------------------------------------------------

STAGE_MANY = r"""
set -e
d=/mnt/sysroot/inactive/resin-boot/overlays
i=0
while [ $i -lt "$1" ]; do
  printf 'overlay %s\n' $i > "$d/$(printf 'a-device-tree-overlay-with-a-rather-long-name-%05d.dtbo' $i)"
  i=$((i + 1))
done
sync
"""


def test_more_than_a_thousand_boot_files(lab: Lab, play: Callable[..., PlaybookRun]) -> None:
    host = lab.hosts[0]
    stage(lab, host, SECOND)
    lab.sh(host, STAGE_MANY, str(MANY), timeout=300)
    old = boot_files(lab, host)
    run = ok(play([task("bootfiles", run_log=RUN_LOG), task("bootfiles")]))
    first, second = run.step(host, "osfleet.hup.bootfiles", 0), run.step(host, "osfleet.hup.bootfiles", 1)
    assert len(first.result["copied"]) > MANY and not second.changed
    new = payload(lab, host, "inactive")
    after = boot_files(lab, host)
    assert all(after.get(n) == d for n, d in new.items() if n not in KEEP_BACK and n != "balenaos.fingerprint")
    logged = [line for line in lab.read(host, RUN_LOG).splitlines() if '"step": "bootfiles"' in line]
    assert logged and len(logged[-1]) > 128 * 1024 and f"{MANY - 1:05d}.dtbo" in logged[-1], "the run log has the step's entry"

    ok(play([task("bootenv", state="armed", expected_digest=DIGESTS[SECOND]), task("reboot", timeout=120)]))
    assert lab.state(host).version == SECOND
    run = play([task("health", expected_version=SECOND, commands=["exit 3"], retries=0, reboot_timeout=120, ignore_errors=True)])
    result = run.step(host, "osfleet.hup.health").result
    assert result["rolled_back"] is True, result
    assert lab.state(host).version == SOURCE
    back = boot_files(lab, host)
    assert not [n for n in back if "rather-long-name" in n], "the rollback removed the new release's overlays"
    assert back["bzImage"] == old["bzImage"]

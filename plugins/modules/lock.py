#!/usr/bin/python
# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: lock
short_description: Take or release the host OS update lock of a balenaOS-style device
version_added: 0.1.0
description:
  - Takes (O(state=present)) or releases (O(state=absent)) the device's update lock, so that two update runs never
    overlap on one device.
  - The lock is the file C(/mnt/state/osfleet/hup.lock), a JSON object with C(owner), C(run_id), C(since),
    C(target), the device's C(boot_id) and C(uptime) when it was last taken or refreshed, and C(interrupted) (set
    by the run's device-side watchdog when the controller went away). It lives on the state partition, so it
    survives the reboot of the update.
  - The change is atomic on the device; it runs under C(flock) on C(/mnt/state/osfleet/hup.lock.guard), checks that
    the lock is still what the probe saw (else it fails and nothing is written), and writes the file through a
    temporary file, C(mv) and C(sync).
  - The same run (same O(owner) and O(run_id)) taking the lock again is no change (it refreshes the lock), which
    lets an interrupted run be resumed. Another run of the same owner takes the lock only when its run was
    recorded as interrupted; a live lock of another run (same owner with another run id, or another owner) fails
    the task with C(update already in progress), naming its owner, run id and age and how to resume that run or
    take the lock over, unless it is stale (see O(stale_after)) or O(force) is set. A held
    C(/var/lock/resinhup.lock) (the reference updater runs) always fails O(state=present).
  - O(state=absent) releases the lock of this run (or, with no O(run_id), of any run of O(owner)), and of another
    run of the same owner whose run was interrupted or whose lock is stale; anything else needs O(force).
  - On a balenaOS (hostapp) device whose bootloader env is not armed for the other root, O(state=present) also records
    the sha256 of the boot partition's keep-back files in C(/mnt/state/osfleet/keepback-before.sha256).
    M(osfleet.hup.bootfiles) and M(osfleet.hup.bootenv) compare them with it after the new OS's hooks ran.
extends_documentation_fragment:
  - osfleet.hup.attributes
  - osfleet.hup.attributes.action_plugin
  - osfleet.hup.attributes.actiongroup_hup
  - osfleet.hup.common
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
    details:
      - The diff shows the lock holder before and after.
  idempotent:
    support: full
options:
  state:
    description:
      - V(present) takes the lock for O(owner); V(absent) releases it.
    type: str
    choices: [present, absent]
    default: present
  owner:
    description:
      - Who holds the lock. Default is C(<user>@<controller host>).
    type: str
  run_id:
    description:
      - An identifier of the update run, stored in the lock and compared with the stored one (see above). When not
        set, the stored one is kept and any run of O(owner) counts as this one.
    type: str
  target_version:
    description:
      - The version the run updates to, stored in the lock as C(target). When not set, the stored one is kept.
    type: str
  stale_after:
    description:
      - A lock that was not taken or refreshed for more than this many seconds is stale and taken over.
      - The time is what the device measures with its uptime and boot id, never its wall clock, so an NTP jump does
        not make a live lock stale. A lock refreshed before the device's current boot is at least as old as that boot.
        Locks written without these fields fall back to C(since) by the device's clock.
      - V(0) means a lock is never stale.
    type: int
    default: 7200
  force:
    description:
      - Take over or remove another run's lock, or an unreadable lock file, whatever its age.
    type: bool
    default: false
  watchdog_timeout:
    description:
      - With O(state=present) and O(run_id), start the run's device-side watchdog (a detached process on the device;
        one that already watches this run keeps running). It holds C(/var/lock/resinhup.lock) for the run (so the
        reference updater does not start meanwhile) and refreshes the lock while it hears from the controller;
        every device script of a step given the same O(run_id) counts, also while it runs.
      - When it heard nothing for this many seconds (the controller was killed or interrupted, or its link was
        lost), it puts back an env the run armed (M(osfleet.hup.bootenv) O(osfleet.hup.bootenv#module:state=armed)
        tells it how; on a balenaOS device it runs the running OS's hooks, C(DURING_UPDATE=0 hostapp-update-hooks)),
        starts C(balena-supervisor) again, records in the lock that the run was interrupted, appends
        a line to O(run_log) and ends. The run's later steps then fail; running again with the same O(run_id)
        resumes it, another run of the same owner may take the lock over.
      - O(state=absent) stops the watchdog of the lock's run. V(0) starts none.
      - Choose it longer than the longest wait between two device scripts of the run (the reboot does not
        count, the watchdog does not survive it).
    type: int
    default: 0
  watchdog_interval:
    description:
      - How often, in seconds, the watchdog looks (and at most every O(watchdog_timeout)/2 seconds refreshes the lock).
    type: int
    default: 5
  extra_keep:
    description:
      - Boot-relative paths kept back in addition to the built-in keep-back list, as given to M(osfleet.hup.bootfiles)
        (its O(osfleet.hup.bootfiles#module:extra_keep)). On a balenaOS device the keep-back record that O(state=present)
        makes covers them too, so that the boot files' verification sees the new OS's hooks change one.
    type: list
    elements: str
    default: []
  assume_held:
    description:
      - Check mode only, with O(state=absent); ignored otherwise. When the device holds no lock, plan the release of
        the one that this run's O(state=present) step before it in the same check run would have taken (check mode
        takes no lock).
      - The role C(osfleet.hup.standard) sets it when its lock step reports a change, so that a dry run predicts the
        release the real run does.
    type: bool
    default: false
author:
  - osfleet maintainers (@osfleet)
seealso:
  - module: osfleet.hup.preflight
"""

EXAMPLES = r"""
- name: Take the update lock for this run
  osfleet.hup.lock:
    run_id: "{{ hup_run_id }}"
    target_version: 2.113.0

- name: Release it at the end
  osfleet.hup.lock:
    state: absent

- name: Break a lock left behind by a crashed controller
  osfleet.hup.lock:
    force: true
"""

RETURN = r"""
watchdog:
  description:
    - What became of the device-side watchdog, V(started), V(running) (it already watched this run), V(stopped) (the
      lock was released; the watchdog ended on SIGTERM), V(killed) (it did not end within 5 s of SIGTERM, SIGKILL
      ended it), V(alive) (still there after SIGKILL; the step fails, the lock released), V(lock-held) (it ended,
      but C(/var/lock/resinhup.lock) was still held 10 s later; the step fails, the lock released) or V(none).
  returned: when the lock was taken or released (not in check mode, not when nothing was to do)
  type: str
  sample: started
lock:
  description: The lock after the task (null when released).
  returned: always
  type: dict
  sample: {"owner": "ops@controller", "run_id": "20261128T1800", "since": "2026-11-28T18:00:04Z", "target": "2.113.0",
           "interrupted": null}
previous:
  description: The lock before the task (null when there was none).
  returned: always
  type: dict
  sample: null
actions:
  description: What the module did, or would do in check mode.
  returned: always
  type: list
  elements: str
  sample: ["took the update lock /mnt/state/osfleet/hup.lock for ops@controller"]
reason:
  description:
    - Why the step failed, without the device's name (which C(msg) starts with).
  returned: failure
  type: str
  sample: >-
    update already in progress: lock held by ops@laptop (run 20261128T180000Z-1a2b) since 2026-11-28T18:00:00Z,
    last refreshed 12 s ago; to resume that run, run again as ops@laptop with hup_run_id=20261128T180000Z-1a2b
    (lock run_id=20261128T180000Z-1a2b); to take the lock over, set hup_lock_force=true (lock force=true)
"""

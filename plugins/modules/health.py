#!/usr/bin/python
# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: health
short_description: Verify a booted host OS update, run health checks, then commit it or roll it back
version_added: 0.1.0
description:
  - The last step of an update, after M(osfleet.hup.reboot).
  - Finds out whether the device rolled itself back. C(rollback-altboot-triggered) means the new OS did not boot
    (reason V(altboot)); C(rollback-health-triggered) means the device's own health checks failed (reason V(health)).
    A device that runs another version than O(expected_version) has been rolled back too. In all these cases the
    module fails with RV(rolled_back=true) and the reason.
  - Otherwise it waits, up to O(device_timeout) seconds, for the device's own C(rollback-health) to finish
    (C(/run/rollback-health.state)). It reconnects when the device reboots meanwhile, for example for a rollback.
  - Then it runs O(commands) on the device. Each one must exit 0, and each is retried O(retries) times with O(delay)
    seconds in between.
  - When the checks pass it commits with exactly the effects of C(rollback-stop), as M(osfleet.hup.bootenv) with
    V(committed) does, unless the device has already committed.
  - When a check fails and O(rollback=true) it rolls back the same way as M(osfleet.hup.bootenv) with
    V(rolled_back), but to the other root even if the device already committed. It reboots, waits for the old OS,
    and fails with reason V(checks).
  - On a balenaOS (hostapp) device whose C(rollback-health) breadcrumb is there, the module never commits. Only
    the device's C(rollback-health) commits, with its commit hooks. When it has not committed within
    O(device_timeout), the module fails saying so. A failing check there rolls back with the previous OS's own hooks,
    run from the inactive hostapp as the device's C(rollback-health) does it.
extends_documentation_fragment:
  - osfleet.hup.attributes
  - osfleet.hup.attributes.action_plugin
  - osfleet.hup.attributes.actiongroup_hup
  - osfleet.hup.common
  - osfleet.hup.release.registry
  - osfleet.hup.release.catalog
attributes:
  check_mode:
    support: full
    details:
      - Reads the device state once and reports whether it would commit.
      - It neither waits, runs O(commands), commits nor rolls back.
  diff_mode:
    support: full
    details:
      - The diff shows the bootloader env and the rollback markers before and after a commit or a rollback.
  idempotent:
    support: full
    details:
      - On a committed device whose checks pass, nothing is changed.
options:
  expected_version:
    description:
      - The host OS version the device must run (C(VERSION) in C(/etc/os-release)). When another version runs, the
        update was rolled back (or never booted) and the module fails.
      - Default is O(target_version) (its catalog version when O(catalog) is given). Without any of them, only the
        rollback markers tell whether the device rolled back.
    type: str
  catalog:
    description:
      - The release catalog, a path on the controller or an C(http(s)) URL (docs/internals.md §3).
      - Optional; with O(target_version) it gives the default of O(expected_version).
    type: str
  target_version:
    description:
      - The version the update went to; the default of O(expected_version).
    type: str
  commands:
    description:
      - Shell commands run on the device with C(sh -c). Each must exit 0 for the update to be committed.
    type: list
    elements: str
    default: []
  retries:
    description:
      - How many times a failing command is run again before the checks count as failed.
    type: int
    default: 3
  delay:
    description:
      - Seconds between the attempts of a failing command.
    type: int
    default: 5
  device_timeout:
    description:
      - Seconds to wait for the device to settle. That covers its own C(rollback-health) run (its state
        C(waiting) or C(testing)), a pending C(rollback-altboot) and a reboot in progress.
      - If C(rollback-health) is still testing when this runs out, the module goes on with its own checks and
        commit. If the device is still rebooting or rolling back, the module fails.
    type: int
    default: 900
  commit:
    description:
      - Commit the update when the checks pass. With V(false), only verify.
    type: bool
    default: true
  rollback:
    description:
      - Roll back to the other root and reboot into it when a check fails. With V(false), fail without touching the
        device.
    type: bool
    default: true
  reboot_timeout:
    description:
      - Seconds to wait for the device to come back after the reboot of a rollback.
    type: int
    default: 600
  connect_timeout:
    description:
      - Seconds each connection attempt may take while the device reboots (ssh C(ConnectTimeout)).
    type: int
    default: 10
  extra_keep:
    description:
      - Boot-relative paths never to overwrite when a rollback restores the old boot files (see M(osfleet.hup.bootfiles)).
    type: list
    elements: str
    default: []
author:
  - osfleet maintainers (@osfleet)
seealso:
  - module: osfleet.hup.reboot
  - module: osfleet.hup.bootenv
"""

EXAMPLES = r"""
- name: Verify the update, check the application, commit or roll back
  osfleet.hup.health:
    expected_version: "{{ hup_target_version }}"
    commands:
      - /usr/lib/balena/balena-healthcheck
      - systemctl is-active balena-supervisor
      - test -s /mnt/data/user-app/heartbeat.log
    retries: 5
    delay: 3
  register: hup_health

- name: Only verify, never roll back
  osfleet.hup.health:
    expected_version: 2.113.0
    rollback: false
    commit: false
"""

RETURN = r"""
rolled_back:
  description: Whether the device is back on its previous OS, rolled back by itself or by this module.
  returned: always
  type: bool
  sample: false
rollback_reason:
  description:
    - Why the device rolled back. V(altboot) means the new OS did not boot (the bootloader fell back). V(health)
      means the device's own health checks failed. V(checks) means O(commands) failed and this module rolled back.
      V(requested) means M(osfleet.hup.bootenv) rolled back. V(unknown) means the device runs its old OS and no marker
      says why.
  returned: when rolled_back
  type: str
  sample: altboot
committed:
  description: Whether the update is committed after the step.
  returned: success
  type: bool
  sample: true
committed_by:
  description:
    - Who committed the update, when it is committed after the checks passed.
    - V(rollback-health) the device's own rollback-health (the step waited for it, or its state in this boot says it
      committed; the step's C(msg) then says "committed by the device's rollback-health"); V(step) the step
      (rollback-stop); V(earlier) it was committed before the step looked and nothing in this boot says by whom.
  returned: when the checks passed and the update is committed, except in check mode
  type: str
  sample: rollback-health
checks:
  description: The result of each command in O(commands).
  returned: when commands ran
  type: list
  elements: dict
  contains:
    command:
      description: The command.
      type: str
    rc:
      description: Its exit code on the last attempt (null when the connection failed).
      type: int
    stdout:
      description: Its standard output (last 2000 characters).
      type: str
    stderr:
      description: Its standard error (last 2000 characters).
      type: str
    attempts:
      description: How many times it ran.
      type: int
    ok:
      description: Whether it passed.
      type: bool
  sample: [{"command": "systemctl is-active balena-supervisor", "rc": 0, "stdout": "active", "stderr": "", "attempts": 1, "ok": true}]
device:
  description: What runs after the step (version, active and inactive root, markers, env, boot id).
  returned: always
  type: dict
  sample: {"version": "2.113.0", "active_root": "resin-rootB", "rollback_markers": [], "boot_env": {"resin_root_part": 3, "upgrade_available": false}}
waited:
  description: Seconds spent waiting for the device to settle.
  returned: success
  type: float
  sample: 5.2
actions:
  description: What was done (or would be done in check mode).
  returned: always
  type: list
  elements: str
  sample: ["set the bootloader env: upgrade_available 1 -> 0, reset the boot counter", "removed /mnt/state/rollback-health-breadcrumb"]
reason:
  description:
    - Why the step failed, without the device's name (which C(msg) starts with).
  returned: failure
  type: str
  sample: "health checks failed: 'systemctl is-active user-app' exited 3; rolled back to 2.88.4 on resin-rootA"
"""

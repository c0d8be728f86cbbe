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
  - The lock is the file C(/mnt/state/osfleet/hup.lock), a JSON object with C(owner), C(run_id), C(since) and
    C(target). It lives on the state partition, so it survives the reboot of the update.
  - The change is atomic on the device; it runs under C(flock) on C(/mnt/state/osfleet/hup.lock.guard), checks that
    the lock is still what the probe saw (else it fails and nothing is written), and writes the file through a
    temporary file, C(mv) and C(sync).
  - The same owner taking the lock again is no change, which lets an interrupted run be run again. Another owner's
    lock fails the task with C(update already in progress), unless it is older than O(stale_after) or O(force) is
    set. A held C(/var/lock/resinhup.lock) (the reference updater runs) always fails O(state=present).
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
      - An identifier of the update run, stored in the lock. When not set, the stored one is kept.
    type: str
  target_version:
    description:
      - The version the run updates to, stored in the lock as C(target). When not set, the stored one is kept.
    type: str
  stale_after:
    description:
      - Another owner's lock older than this many seconds (by the device's clock) is stale and taken over.
      - V(0) means a lock is never stale.
    type: int
    default: 7200
  force:
    description:
      - Take over or remove another owner's lock, or an unreadable lock file, whatever its age.
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
lock:
  description: The lock after the task (null when released).
  returned: always
  type: dict
  sample: {"owner": "ops@controller", "run_id": "20261128T1800", "since": "2026-11-28T18:00:04Z", "target": "2.113.0"}
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
  sample: "update already in progress: lock held by ops@laptop since 2026-11-28T18:00:00Z"
"""

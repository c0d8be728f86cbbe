#!/usr/bin/python
# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: reboot
short_description: Reboot a Python-less device and wait until it is back on a new boot
version_added: 0.1.0
description:
  - Reboots the device without Python on it (M(ansible.builtin.reboot) and M(ansible.builtin.wait_for_connection)
    need Python) and waits until it answers with a new kernel boot id.
  - Records the boot id, starts C(reboot) detached with C(setsid) (so that the end of the connection does not kill it),
    drops the connection, then polls C(/proc/sys/kernel/random/boot_id) until it differs; connection errors while
    the device is down are expected and retried until O(timeout).
  - Reports what booted (version and active root read from the device after the boot), because a rollback also
    gives a new boot id.
  - By default reboots only when an update is pending, that is when the bootloader env names another root than the
    booted one.
extends_documentation_fragment:
  - osfleet.hup.attributes
  - osfleet.hup.attributes.action_plugin
  - osfleet.hup.attributes.actiongroup_hup
  - osfleet.hup.common
attributes:
  check_mode:
    support: full
    details:
      - Reports whether it would reboot; never reboots. With O(assume_pending=true) it plans the reboot that the
        env armed by an earlier M(osfleet.hup.bootenv) step of the same check run would bring.
  diff_mode:
    support: full
    details:
      - The diff shows the boot before the reboot and the one after it (in check mode, the root the next boot starts).
  idempotent:
    support: full
    details:
      - With O(only_if_pending=true), a device that already runs the root its env names is not rebooted.
options:
  timeout:
    description:
      - Seconds to wait, from the reboot command, for the device to answer with a new boot id.
    type: int
    default: 600
  only_if_pending:
    description:
      - Reboot only when the bootloader env names a root other than the booted one (an armed update or a rollback
        waiting for its boot). With V(false), always reboot.
    type: bool
    default: true
  connect_timeout:
    description:
      - Seconds each connection attempt may take while waiting (the connection's C(timeout), ssh C(ConnectTimeout)).
    type: int
    default: 10
  assume_pending:
    description:
      - Check mode only; ignored otherwise. Plan as if the bootloader env named the inactive root, as the
        M(osfleet.hup.bootenv) O(osfleet.hup.bootenv#module:state=armed) step before it in the same check run would
        have left it (check mode writes no env, so the device's own env still names the booted root).
      - The role C(osfleet.hup.standard) sets it when its arm step reports a change, so that a dry run predicts the
        reboot the real run does.
    type: bool
    default: false
notes:
  - The device needs no Python; the step runs on the controller and uses C(sh), C(setsid), C(reboot) and C(jq) on the device.
  - Application update locks are not waited for; stop or drain the application first if it needs that.
author:
  - osfleet maintainers (@osfleet)
seealso:
  - module: osfleet.hup.bootenv
  - module: osfleet.hup.health
"""

EXAMPLES = r"""
- name: Boot the armed root
  osfleet.hup.reboot:
    timeout: 900
  register: hup_reboot

- name: Show what booted
  ansible.builtin.debug:
    msg: "{{ hup_reboot.device.version }} on {{ hup_reboot.device.active_root }} after {{ hup_reboot.elapsed }} s"

- name: Reboot unconditionally
  osfleet.hup.reboot:
    only_if_pending: false
"""

RETURN = r"""
rebooted:
  description: Whether the device was rebooted (in check mode, whether it would be).
  returned: success
  type: bool
  sample: true
elapsed:
  description: Seconds from the reboot command to the first answer with a new boot id.
  returned: when rebooted
  type: float
  sample: 4.31
boot_id:
  description: The boot id after the step.
  returned: success
  type: str
  sample: 0c6f1f6e-7e6a-4a3b-9d0e-3c5b8e1c2a77
boot_id_before:
  description: The boot id before the reboot.
  returned: success
  type: str
  sample: 5b1f2c1e-4a1c-4bb4-9a55-0f1b5b9d8f11
expected_root:
  description: The root the bootloader env said the boot would start.
  returned: success
  type: str
  sample: resin-rootB
device:
  description: What runs after the step.
  returned: success
  type: dict
  contains:
    version:
      description: The host OS version that runs.
      type: str
      sample: 2.113.0
    active_root:
      description: The booted root partition.
      type: str
      sample: resin-rootB
    rollback_markers:
      description: Rollback markers in C(/mnt/state).
      type: list
      elements: str
      sample: ["rollback-altboot-breadcrumb", "rollback-health-breadcrumb", "rollback-health-variables"]
    boot_env:
      description: The bootloader env keys (C(resin_root_part), C(upgrade_available), C(bootcount)).
      type: dict
      sample: {"resin_root_part": 3, "upgrade_available": true, "bootcount": 1}
    inactive_root:
      description: The spare root partition after the step.
      type: str
      sample: resin-rootA
    inactive_version:
      description: The host OS version on the spare root (the one to roll back to after an update).
      type: str
      sample: 2.88.4
    rollback_health_state:
      description: What the device's C(rollback-health) service wrote to C(/run/rollback-health.state), empty when nothing.
      type: str
      sample: ""
    boot_id:
      description: The kernel's boot id of the boot that runs.
      type: str
      sample: 0c6f1f6e-7e6a-4a3b-9d0e-3c5b8e1c2a77
actions:
  description: What was done (or would be done in check mode).
  returned: always
  type: list
  elements: str
  sample: ["rebooted: the bootloader env names resin-rootB, the device runs resin-rootA"]
reason:
  description:
    - Why the step failed, without the device's name (which C(msg) starts with).
  returned: failure
  type: str
  sample: "the device did not come back with a new boot id within 600 s (Connection refused)"
"""

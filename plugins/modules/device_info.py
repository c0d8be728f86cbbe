#!/usr/bin/python
# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: device_info
short_description: Read the host OS update state of a balenaOS-style device
version_added: 0.1.0
description:
  - Reads, in one round trip over the connection, everything a host OS update decides on
    -- C(/etc/os-release), the active and inactive root partition (from C(/proc/mounts), never from the bootloader env),
    the bootloader env, rollback markers, free space, supervisor versions, the update lock and the boot id.
  - Runs on devices without Python; the module is implemented as a controller-side action plugin
    that only executes POSIX shell commands (and C(jq)) on the device.
  - Never changes anything.
extends_documentation_fragment:
  - osfleet.hup.attributes
  - osfleet.hup.attributes.info_module
  - osfleet.hup.attributes.action_plugin
  - osfleet.hup.attributes.actiongroup_hup
  - osfleet.hup.common
options: {}
author:
  - osfleet maintainers (@osfleet)
seealso:
  - module: osfleet.hup.preflight
"""

EXAMPLES = r"""
- name: Read the update state of every device
  osfleet.hup.device_info:
  register: hup_info

- name: Show the booted version and partition
  ansible.builtin.debug:
    msg: "{{ hup_info.device.version }} on {{ hup_info.device.active_root }}"
"""

RETURN = r"""
device:
  description: The device's update state.
  returned: success
  type: dict
  contains:
    device_type:
      description: The device type slug (C(SLUG) in os-release).
      type: str
      sample: genericx86-64-ext
    version:
      description: The running host OS version (C(VERSION) in os-release).
      type: str
      sample: 2.88.4
    active_root:
      description: The label of the booted root partition.
      type: str
      sample: resin-rootA
    inactive_root:
      description: The label of the spare root partition.
      type: str
      sample: resin-rootB
    bootloader:
      description: The bootloader env format found on the boot partition.
      type: str
      sample: uboot
    boot_env:
      description: The bootloader env keys that the update uses.
      type: dict
      sample: {"resin_root_part": 2, "upgrade_available": false, "bootcount": 0}
    rollback_markers:
      description: Rollback breadcrumbs and markers present in C(/mnt/state).
      type: list
      elements: str
      sample: []
    rolled_back:
      description:
        - The releases that rolled back on this device and were not tried again since (arming removes the markers);
          M(osfleet.hup.preflight) refuses them unless O(osfleet.hup.preflight#module:retry_rolled_back) is set.
        - C(reason) is C(altboot) (the new OS did not boot), C(health) (the device's health checks failed), C(checks)
          (M(osfleet.hup.health)'s commands failed), C(requested) (M(osfleet.hup.bootenv)) or C(unknown);
          C(marker) is the file that says so; C(digest) the release's digest when the inactive root's stamp names it.
      type: list
      elements: dict
      sample: [{"version": "2.115.0", "reason": "health", "marker": "/mnt/state/rollback-health-triggered", "digest": "sha256:..."}]
    free_kib:
      description: Free space in KiB on the boot, inactive root, data and state partitions.
      type: dict
      sample: {"boot": 30000, "inactive": 250000, "data": 280000, "state": 15000}
    supervisor_running:
      description: The version of the supervisor that runs.
      type: str
      sample: 14.0.8
    supervisor_shipped:
      description: The version of the supervisor that the running OS ships.
      type: str
      sample: 14.0.8
    inactive_stamp:
      description: The release stamp of the inactive root (what the rootfs step wrote there), or null.
      type: dict
      sample: {"version": "2.113.0", "digest": "sha256:5d0...", "device_type": "genericx86-64-ext"}
    lock:
      description: The osfleet update lock, when held.
      type: dict
      sample: null
    boot_id:
      description: The kernel's boot id (changes on every boot).
      type: str
      sample: 5b1f2c1e-4a1c-4bb4-9a55-0f1b5b9d8f11
    update_pending:
      description: True while an update is armed or waiting for its commit (breadcrumbs or C(upgrade_available=1)).
      type: bool
      sample: false
    meta_balena_version:
      description: The balenaOS meta-layer version (C(META_BALENA_VERSION) in os-release), empty when not set.
      type: str
      sample: 2.88.4
    machine:
      description: The Yocto machine (C(MACHINE) in os-release), empty when not set.
      type: str
      sample: genericx86-64-ext
    arch:
      description: The CPU architecture of the running OS (C(OSFLEET_ARCH) in os-release, else C(uname -m)).
      type: str
      sample: amd64
    active_index:
      description: The partition number of the booted root (2 for C(resin-rootA), 3 for C(resin-rootB)).
      type: int
      sample: 2
    inactive_index:
      description: The partition number of the spare root.
      type: int
      sample: 3
    services:
      description: The state (C(active) or C(inactive)) of the services the update touches or waits for.
      type: dict
      sample: {"balena-supervisor": "active", "balena": "active", "user-app": "active", "rollback-health": "inactive", "rollback-altboot": "inactive"}
    active_stamp:
      description: The release stamp of the booted root (written by M(osfleet.hup.rootfs) when it wrote that root), or null.
      type: dict
      sample: {"version": "2.88.4", "digest": "sha256:9ab...", "device_type": "genericx86-64-ext"}
    inactive_version:
      description: The host OS version on the spare root (C(VERSION) in its os-release), empty when it holds none.
      type: str
      sample: 2.88.4
    legacy_lock_held:
      description: True when another process holds the reference updater's lock C(/var/lock/resinhup.lock).
      type: bool
      sample: false
    uuid:
      description: The device's UUID from C(config.json) on the boot partition, empty when absent.
      type: str
      sample: 6f1c0e2d9b8a4c7e
    python_present:
      description: Whether a Python interpreter is on the device's C(PATH) (the collection never needs one).
      type: bool
      sample: false
    hostapp:
      description:
        - Whether the device is a balenaOS device whose root partitions hold hostapps (a balena-engine data root and a C(current) link);
          the update then writes the spare root with the device's own C(hostapp-update). False for a plain A/B device.
      type: bool
      sample: true
    active_hostapp:
      description: The hostapp of the booted root partition (C(current) is the target of its C(current) link), or null on a plain A/B device.
      type: dict
      sample: {"current": "hostapps/0c4b6f...", "container": "0c4b6f...", "image_id": "sha256:1c1745..."}
    inactive_hostapp:
      description:
        - The hostapp of the spare root partition, or null when it holds none;
          C(image_id) is empty when its container's config is missing (a half-written partition).
      type: dict
      sample: {"current": "hostapps/5d0a1e...", "container": "5d0a1e...", "image_id": "sha256:c06c9f..."}
actions:
  description: What the module did (always empty; it is read-only).
  returned: always
  type: list
  elements: str
  sample: []
reason:
  description:
    - Why the step failed, without the device's name (which C(msg) starts with).
  returned: failure
  type: str
  sample: "cannot read /etc/os-release"
"""

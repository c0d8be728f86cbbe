#!/usr/bin/python
# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: preflight
short_description: Check that a host OS update of a balenaOS-style device can start
version_added: 0.1.0
description:
  - Reads the release catalog on the controller and the device's state in one round trip, and runs every coherence
    check of a host OS update at once. It fails with all the problems found, never with only the first.
  - Checks that the device type matches the release, the target version exists in the catalog, the update is not a
    downgrade and does not switch between development and production, the running version and the target are
    supported (balena's rules, as P(osfleet.hup.hup_method#filter) applies them; a refusal names its rule),
    the update method is the standard A/B one (or O(allow_takeover) is set), a registry answers from the device,
    the inactive root and C(/mnt/data) are large enough, C(/mnt/state) keeps at least 64 KiB free, no other run holds
    the update lock, and no update of another version is waiting for its commit.
  - A device already on the target is not a failure; the result says RV(phase=current), or
    RV(phase=supervisor_behind) when its running supervisor is older than the one the release ships.
  - Leftovers of an earlier attempt (rollback breadcrumbs, an armed env naming the inactive root, an inactive root
    stamped with another release) are not problems; the update overwrites the inactive root.
  - Never changes anything.
extends_documentation_fragment:
  - osfleet.hup.attributes
  - osfleet.hup.attributes.info_module
  - osfleet.hup.attributes.action_plugin
  - osfleet.hup.attributes.actiongroup_hup
  - osfleet.hup.common
  - osfleet.hup.release
  - osfleet.hup.release.registry
  - osfleet.hup.release.catalog
options:
  allow_downgrade:
    description:
      - Allow a target older than the running version.
    type: bool
    default: false
  allow_takeover:
    description:
      - Accept an update that needs the advanced (takeover) method, which rewrites the whole disk and loses the data
        partition. Without it, such an update is a problem.
    type: bool
    default: false
  check_registry:
    description:
      - Check from the device that the catalog's primary or fallback registry answers on C(/v2/).
      - An answer with HTTP 200 or 401 counts; the check fails only when no registry answers.
      - Only where the update pulls from a registry (phases C(needed), C(staged) and C(supervisor_behind)). A device
        whose C(/etc/os-release) names the target is not checked in the probe, and gets the check in a second round
        trip only when its supervisor is behind.
    type: bool
    default: true
  min_free_mib:
    description:
      - Free space required on the device's partitions, in MiB, besides what the release itself needs.
    type: dict
    default: {}
    suboptions:
      data:
        description:
          - Margin on C(/mnt/data) beyond the release size (the image is fetched there).
        type: int
        default: 64
      state:
        description:
          - Free space required on C(/mnt/state). At least 64 KiB is always required (a full state partition breaks
            the boot, meta-balena#1657).
        type: int
        default: 0
  lock_owner:
    description:
      - The owner this run takes the update lock as (see M(osfleet.hup.lock)). A lock held by this owner and
        O(lock_run_id) is not a problem, so that an interrupted run can be run again; nor is a lock of this owner
        whose run the device's watchdog recorded as interrupted.
      - Default is C(<user>@<controller host>), the same default as M(osfleet.hup.lock).
    type: str
  lock_run_id:
    description:
      - The run id this run takes the update lock with (M(osfleet.hup.lock) O(osfleet.hup.lock#module:run_id)).
        A live lock of the same owner with another run id is a problem (another run of this owner, e.g. on the same
        CI runner, is updating the device). Not set, any run id of O(lock_owner) is this run's.
    type: str
  lock_stale_after:
    description:
      - A lock that nobody refreshed for more than this many seconds is stale and not a problem; M(osfleet.hup.lock)
        takes it over. The time is measured by the device's uptime (not its wall clock), see M(osfleet.hup.lock).
    type: int
    default: 7200
  retry_rolled_back:
    description:
      - Try a release again that rolled back on this device. Without it, a target release that fell back there
        (C(rollback-altboot-triggered) or C(rollback-health-triggered) newer than the inactive root's stamp, or
        osfleet's C(/mnt/state/osfleet-rollback) naming it as the version the device left) is a problem that names
        the rollback and its reason. Arming the switch removes those markers.
    type: bool
    default: false
notes:
  - The inactive root must hold the release unpacked, the catalog's C(size_unpacked) with 10% headroom (a catalog
    without C(size_unpacked) only gives the compressed pull size C(size); then its 1.2 times is the guess).
    M(osfleet.hup.rootfs) checks the same before it formats anything.
  - The space checks run only when the update still has to be written (RV(phase=needed)); the registry check when
    the device still needs something from a registry (RV(phase=needed), RV(phase=staged) or RV(phase=supervisor_behind)).
author:
  - osfleet maintainers (@osfleet)
seealso:
  - module: osfleet.hup.device_info
  - module: osfleet.hup.lock
  - module: osfleet.hup.fetch
"""

EXAMPLES = r"""
- name: Check that the update to 2.113.0 can start
  osfleet.hup.preflight:
    catalog: "{{ hup_catalog }}"
    target_version: 2.113.0
  register: hup_preflight

- name: Skip the devices that are already on the target
  ansible.builtin.meta: end_host
  when: hup_preflight.phase == 'current'

- name: Allow a downgrade, skip the registry check
  osfleet.hup.preflight:
    catalog: https://releases.example.com/catalog.json
    target_version: 2.88.4
    allow_downgrade: true
    check_registry: false
    min_free_mib:
      data: 128
"""

RETURN = r"""
phase:
  description:
    - Where the device stands towards the target.
    - V(current) on the target and committed, nothing to do; V(supervisor_behind) on the target and committed, but
      the running supervisor is older than the release's (e.g. a balenaOS device that lost power after the new OS's
      hooks armed it, before the supervisor step), only the supervisor is left to update (M(osfleet.hup.supervisor)
      O(osfleet.hup.supervisor#module:state=updated)); V(pending_commit) booted the target, not committed yet;
      V(staged) the inactive root holds the target (the bootloader may be armed); V(needed) the update must run.
    - Null when the target is unknown.
  returned: always
  type: str
  sample: needed
method:
  description:
    - The update method, V(balenahup) (standard A/B) or V(takeover) (advanced, whole disk), as
      P(osfleet.hup.hup_method#filter) decides it; also when the update is refused (then the method it would need).
  returned: when the target is known
  type: str
  sample: balenahup
method_rule:
  description:
    - The rule of P(osfleet.hup.hup_method#filter) that decided the method or refused the update (V(standard),
      V(partition-layout), V(architecture), V(takeover-version), V(downgrade), V(dev-prod-switch), ...).
    - Null when the device already runs the target.
  returned: when the target is known
  type: str
  sample: standard
method_reason:
  description: Why the rule decided so, naming the versions, layouts or architectures; null with RV(method_rule).
  returned: when the target is known
  type: str
  sample: "the standard update works from 2.88.4 to 2.113.0: genericx86-64-ext has no takeover version"
release:
  description:
    - The catalog entry of the target release.
    - When the preflight fails, only its C(version) and C(device_type).
  returned: when the target is known
  type: dict
  sample: {"device_type": "genericx86-64-ext", "version": "2.113.0", "digest": "sha256:5d0c...", "size": 23068672}
problems:
  description: Every problem found; the module fails when it is not empty.
  returned: always
  type: list
  elements: str
  sample: ["target 2.88.4 is older than the running 2.113.0 (downgrades are not allowed)"]
registries:
  description:
    - The registries checked from the device, with the error of those that did not answer.
    - Empty when O(check_registry) is false, and for a device whose C(/etc/os-release) VERSION names the target
      unless its supervisor is behind (phases C(current) and C(pending_commit) pull nothing).
    - When the preflight fails, only those that did not answer.
  returned: always
  type: list
  elements: dict
  sample: [{"name": "primary", "registry": "127.0.0.1:5000", "ok": true, "error": ""}]
device:
  description:
    - The device facts, as M(osfleet.hup.device_info) returns them.
    - When the preflight fails, a summary (so that the failure message stays short) with C(version), C(device_type),
      C(active_root), C(inactive_root), C(inactive_version), C(boot_id), and C(lock), C(rolled_back) and
      C(rollback_markers) when not empty.
  returned: always
  type: dict
  sample: {"device_type": "genericx86-64-ext", "version": "2.88.4", "active_root": "resin-rootA"}
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
  sample: "preflight failed: target 2.88.4 is older than the running 2.113.0 (downgrades are not allowed)"
"""

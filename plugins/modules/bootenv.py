#!/usr/bin/python
# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: bootenv
short_description: Arm, commit or roll back the A/B switch in the bootloader env of a balenaOS-style device
version_added: 0.1.0
description:
  - Manages the bootloader env on the boot partition (u-boot C(resinOS_uEnv.txt) + C(bootcount.env), or a GRUB
    C(grubenv)) and the rollback markers in C(/mnt/state), the way the balenaOS hooks and C(rollback-stop) do.
  - O(state=armed) makes the next boot start the inactive root, with the automatic rollbacks armed
    (hooks C(80-rollback) and C(99-resin-uboot)/C(99-resin-grub)).
  - O(state=committed) accepts the booted root (C(rollback-stop)).
  - O(state=rolled_back) returns to the root that ran before the update, boot files included.
  - Env files are written atomically (temporary file, sync, rename). The active root is taken from
    C(/proc/mounts), never from the env.
  - On a balenaOS (hostapp) device the new OS's C(hostapp-update) hooks, run by M(osfleet.hup.rootfs), armed the
    env. O(state=armed) then never writes. It verifies that the env names the new root and is armed, that the
    rollback breadcrumbs are there and the boot files are the new OS's. It reports no change, or fails in one sentence
    saying what the hooks were to do and what it found instead, having written nothing.
  - On such a device O(state=rolled_back) puts the env and boot files back with the running OS's own hooks
    (C(DURING_UPDATE=0 hostapp-update-hooks)) and verifies them. Rolling a booted new OS back to the previous
    one is left to the device's C(rollback-health).
  - O(state=reverted) arms the switch back to the release the inactive root still holds (the revert of a committed
    update, C(hup_rollout_action=revert) of the playbook C(osfleet.hup.rollout)), only when that root verifiably holds
    O(expected_version). On a balenaOS device the old OS's own hooks arm it, as C(rollback-health) does (C(DURING_UPDATE=1
    hostapp-update-hooks) chrooted in the inactive hostapp, after C(rollback-health-variables) is written as
    C(hostapp-update) writes it); the old root is never rewritten. A reboot (M(osfleet.hup.reboot)) and
    M(osfleet.hup.health) complete it.
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
      - Reports the env and marker changes it would make; writes nothing.
  diff_mode:
    support: full
    details:
      - The diff shows the env files and the rollback markers before and after.
  idempotent:
    support: full
    details:
      - Each state is read back from the device; when it already holds, nothing is written.
options:
  state:
    description:
      - V(armed) sets C(resin_root_part) to the inactive root (a hex partition index for u-boot, decimal for GRUB),
        C(upgrade_available=1) and resets the boot counter (C(bootcount.env) removed, GRUB C(bootcount=0)); creates
        C(rollback-health-breadcrumb), C(rollback-altboot-breadcrumb) and C(rollback-health-variables)
        (C(BALENAOS_ROLLBACK_VPNONLINE=0)) in C(/mnt/state) and removes C(rollback-health-triggered),
        C(rollback-altboot-triggered), C(rollback-health-failed) and C(osfleet-rollback).
        Requires the inactive root to carry a release stamp (and O(expected_digest) when given) and the boot
        partition to hold that root's boot files (M(osfleet.hup.bootfiles)). When the device already booted the root
        stamped with O(expected_digest), nothing is done.
      - V(committed) has exactly the effects of C(rollback-stop); removes C(rollback-health-variables), both
        breadcrumbs and C(rollback-health-failed), clears the boot counter and sets C(upgrade_available=0).
        Refuses while the env is armed for a root that has not booted yet. On a balenaOS (hostapp) device, after
        those effects it runs the running OS's commit hooks (C(hostapp-update-hooks-v2 --commit)), as the
        device's C(rollback-health) does; RV(commit_hooks) reports them.
      - V(rolled_back) points the env back at the root that ran before the update with C(upgrade_available=0), puts
        that root's C(/resin-boot) files back on the boot partition (same keep-back rules as M(osfleet.hup.bootfiles)),
        clears the breadcrumbs like C(rollback-stop) and records C(/mnt/state/osfleet-rollback) (reason, time).
        The root to return to is the active one when the env is armed but that boot has not happened, the inactive
        one when the device booted the armed root; when the env is not armed and names the booted root nothing was
        switched, and only that root's boot files are restored if they differ. A reboot completes it
        (M(osfleet.hup.reboot)).
      - V(reverted) is V(armed) for the root that ran before the update. The inactive root must hold O(expected_version).
        On a balenaOS (hostapp) device its hostapp's image id must be O(expected_image_id) (or, without it, the root's
        release stamp must name that version and that image id); on a plain A/B device its release stamp must name the
        version (and O(expected_digest) when given), and its boot files must be on the boot partition
        (M(osfleet.hup.bootfiles) copies them). Otherwise it fails with C(not revertible) and what the root holds, writing
        nothing. When the device already booted O(expected_version), nothing is done.
    type: str
    required: true
    choices: [armed, committed, rolled_back, reverted]
  expected_version:
    description:
      - With O(state=reverted) (required there), the release the inactive root must still hold.
    type: str
  expected_image_id:
    description:
      - With O(state=reverted) on a balenaOS (hostapp) device, the image id (C(sha256:...)) of the hostapp the inactive
        root held when the device ran O(expected_version) (the update recorded it).
    type: str
  expected_digest:
    description:
      - With O(state=armed), the image digest (C(sha256:...)) the inactive root's stamp must name (with O(state=reverted),
        on a plain A/B device).
      - Default is the digest of O(target_version) in O(catalog) when they are given.
    type: str
  catalog:
    description:
      - The release catalog, a path on the controller or an C(http(s)) URL (docs/internals.md §3).
      - Optional. With O(state=armed) and O(target_version), it gives the default of O(expected_digest).
    type: str
  target_version:
    description:
      - The release to arm. Goes with O(catalog).
    type: str
  extra_keep:
    description:
      - Boot-relative paths that M(osfleet.hup.bootfiles) was told to keep back (its O(osfleet.hup.bootfiles#module:extra_keep));
        used when checking the boot files before arming and when restoring them on a rollback.
    type: list
    elements: str
    default: []
author:
  - osfleet maintainers (@osfleet)
seealso:
  - module: osfleet.hup.bootfiles
  - module: osfleet.hup.reboot
  - module: osfleet.hup.health
"""

EXAMPLES = r"""
- name: Arm the switch to the freshly written root
  osfleet.hup.bootenv:
    state: armed
    expected_digest: "{{ hup_release.digest }}"

- name: Commit the booted update (what rollback-stop does)
  osfleet.hup.bootenv:
    state: committed

- name: Undo an update that is armed or booted but not committed
  osfleet.hup.bootenv:
    state: rolled_back

- name: Preview the env change
  osfleet.hup.bootenv:
    state: armed
  check_mode: true
  diff: true
"""

RETURN = r"""
acted:
  description:
    - The step had sent its write of the bootloader env when it failed, so the env may be written (the role's
      rescue reads the device to tell).
  returned: failure, when the step got that far
  type: bool
  sample: true
boot_env:
  description: The bootloader env after the step (in check mode, as it would be).
  returned: success
  type: dict
  contains:
    bootloader:
      description: C(uboot) or C(grub).
      type: str
      sample: uboot
    resin_root_part:
      description: The partition index the env boots.
      type: int
      sample: 3
    root:
      description: The label of that partition.
      type: str
      sample: resin-rootB
    upgrade_available:
      description: Whether the boot counter and the rollbacks are armed.
      type: bool
      sample: true
    bootcount:
      description: The boot counter.
      type: int
      sample: 0
    bootcount_limit:
      description: Boots allowed before the bootloader falls back to the other root.
      type: int
      sample: 3
release:
  description: With O(state=armed), the version and digest of the armed release (the inactive root's stamp); with O(state=reverted), its version.
  returned: when state is armed or reverted and something was armed
  type: dict
  sample: {"version": "2.113.0", "digest": "sha256:5d0..."}
rollback_to:
  description: With O(state=rolled_back), the root and version the device returns to.
  returned: when state is rolled_back
  type: dict
  sample: {"root": "resin-rootA", "version": "2.88.4"}
restored:
  description: With O(state=rolled_back), the boot files that were put back.
  returned: when state is rolled_back
  type: list
  elements: str
  sample: ["bzImage"]
commit_hooks:
  description:
    - With O(state=committed) on a balenaOS (hostapp) device, the run of the running OS's commit hooks.
    - C(tool) the runner (null when the device has none), C(rc) its exit status, C(failed) the commit hooks that
      failed (the runner goes on with the others), C(ok), C(output) its last lines.
  returned: when state is committed and the step committed a balenaOS device
  type: dict
  sample: {"tool": "hostapp-update-hooks-v2", "rc": 0, "failed": [], "ok": true, "output": "hostapp-update-hooks: running ..."}
actions:
  description: What was done (or would be done in check mode).
  returned: always
  type: list
  elements: str
  sample: ["set the bootloader env: resin_root_part 2 -> 3 (resin-rootB), upgrade_available 0 -> 1, reset the boot counter",
           "created /mnt/state/rollback-health-breadcrumb"]
reason:
  description:
    - Why the step failed, without the device's name (which C(msg) starts with).
  returned: failure
  type: str
  sample: "the inactive root (resin-rootB) holds no verified release; run osfleet.hup.rootfs first"
"""

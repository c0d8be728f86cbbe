#!/usr/bin/python
# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: bootfiles
short_description: Copy the new host OS's boot files to the boot partition, keeping back device configuration
version_added: 0.1.0
description:
  - Puts the boot-partition payload of the release on the inactive root (its C(/resin-boot) directory)
    on the boot partition C(/mnt/boot), like the C(1-bootfiles) hook of balenaOS.
  - Files that must never be overwritten are kept back (C(config.json), C(config.txt), C(splash/balena-logo.png),
    C(configfs.json), C(hw_intfc.conf), the bootloader env files, C(system-connections/), C(system-proxy/) and
    O(extra_keep)); C(extra_uEnv.txt) and C(grub_extraenv) are copied only when the boot partition has none.
  - Checks the space first. When the copy would leave less than O(reserve_kib) free, the module fails
    before writing anything.
  - Each file is written next to its destination as C(<name>.osfleet-tmp), synced, then put in place without a rename
    over the old file (vfat does that as an unlink and a rename). The old file is renamed to C(<name>.old.osfleet-tmp),
    the new one to the free name, each synced, and the old one removed. C(balenaos.fingerprint) is regenerated last.
    Temporaries left by an interrupted run are removed.
  - Names are matched case-insensitively and no permissions or symlinks are written, because the boot
    partition is vfat on real devices.
  - Requires the inactive root to carry a release stamp (written by M(osfleet.hup.rootfs)); it does not
    change which root boots (that is M(osfleet.hup.bootenv)).
  - On a balenaOS (hostapp) device it never writes. The new OS's C(hostapp-update) hooks, run by
    M(osfleet.hup.rootfs), copied the boot files; the module verifies that the boot partition holds the inactive
    hostapp's C(/resin-boot) files except the keep-back ones, and that the keep-back files are byte-identical to the
    record M(osfleet.hup.lock) made before the update. It reports no change with a message saying so, or fails in one
    sentence saying what the hooks were to do and what it found instead (the file lacking, with other contents, or a
    keep-back file changed or gone), having written nothing.
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
      - Reads and hashes the files and reports what would be copied; writes nothing.
  diff_mode:
    support: full
    details:
      - The diff lists each file that is (or would be) written with its old and new sha256.
  idempotent:
    support: full
    details:
      - Files whose content already matches are not written; a second run reports no change.
options:
  catalog:
    description:
      - The release catalog, a path on the controller or an C(http(s)) URL (docs/internals.md §3).
      - Optional. With O(target_version), the inactive root's stamp must name that release's digest, so that only the
        target's boot files are copied; without it, the files of whatever verified release the inactive root holds are.
    type: str
  target_version:
    description:
      - The release the inactive root must hold. Goes with O(catalog).
    type: str
  extra_keep:
    description:
      - More boot-relative paths never to overwrite, in addition to the built-in keep-back list.
      - A path ending in C(/) keeps back everything below that directory. Matched case-insensitively.
    type: list
    elements: str
    default: []
  reserve_kib:
    description:
      - Free space in KiB that must remain on the boot partition during and after the copy.
    type: int
    default: 512
notes:
  - The device needs no Python; the step runs on the controller and uses C(sh), C(find), C(sha256sum), C(stat)
    and C(jq) on the device.
author:
  - osfleet maintainers (@osfleet)
seealso:
  - module: osfleet.hup.rootfs
  - module: osfleet.hup.bootenv
"""

EXAMPLES = r"""
- name: Put the new OS's boot files on the boot partition
  osfleet.hup.bootfiles:
  register: hup_bootfiles

- name: Keep a custom device tree overlay and a whole directory
  osfleet.hup.bootfiles:
    extra_keep:
      - overlays/custom.dtbo
      - vendor/
    reserve_kib: 1024

- name: Show what would be copied, without writing
  osfleet.hup.bootfiles:
  check_mode: true
  diff: true
"""

RETURN = r"""
copied:
  description: Boot-relative paths that were (or, in check mode, would be) written.
  returned: success
  type: list
  elements: str
  sample: ["bzImage", "EFI/BOOT/bootx64.efi"]
kept_back:
  description: Payload paths that were not copied because of the keep-back rules.
  returned: success
  type: list
  elements: str
  sample: ["config.txt", "splash/balena-logo.png"]
unchanged:
  description: Payload paths whose content on the boot partition already matches.
  returned: success
  type: list
  elements: str
  sample: ["overlays/vc4-kms-v3d.dtbo"]
needed_kib:
  description: Size in KiB of the files to write.
  returned: success
  type: int
  sample: 8123
free_after_kib:
  description: Free space in KiB expected on the boot partition after the copy.
  returned: success
  type: int
  sample: 24012
release:
  description: The release stamp of the inactive root whose files were copied.
  returned: success
  type: dict
  sample: {"version": "2.113.0", "digest": "sha256:5d0...", "device_type": "genericx86-64-ext"}
actions:
  description: What was done (or would be done in check mode), one sentence per file.
  returned: always
  type: list
  elements: str
  sample: ["replaced /mnt/boot/bzImage from the inactive root (resin-rootB, 2.113.0)", "regenerated /mnt/boot/balenaos.fingerprint"]
reason:
  description:
    - Why the step failed, without the device's name (which C(msg) starts with).
  returned: failure
  type: str
  sample: "boot partition too small: needs 1113 KiB, has 700 KiB free (keeps 512 KiB reserve)"
"""

#!/usr/bin/python
# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: rootfs
short_description: Write the target host OS into the inactive root partition of a balenaOS-style device
version_added: 0.1.0
description:
  - Formats the inactive root partition and fills it from the image that M(osfleet.hup.fetch) left in O(cache_dir).
    From the full image, the layers are applied in manifest order (with OCI whiteouts). From a delta, the active
    root is copied first and the delta layer applied on top.
  - The written root is checked against the release's own C(usr/share/osfleet/rootfs.sha256) list; then the release
    stamp C(/.osfleet-release.json) (device type, version, digest, source, time) is written last, atomically.
    A root without the stamp is never taken for the target.
  - The stamp is removed before anything else is written, so an interrupted write never looks finished.
  - The partition to write is taken from C(/proc/mounts) and the partition labels, never from the bootloader env;
    the script refuses to format the partition mounted at C(/). Which root boots does not change.
  - Nothing is done when the inactive root is already stamped with the target digest. The full image is preferred
    when both it and a delta are cached.
  - An image that unpacks larger than the inactive root (the catalog's C(size_unpacked), as M(osfleet.hup.preflight)
    checks it) is refused before the partition is formatted.
extends_documentation_fragment:
  - osfleet.hup.attributes
  - osfleet.hup.attributes.action_plugin
  - osfleet.hup.attributes.actiongroup_hup
  - osfleet.hup.common
  - osfleet.hup.release
attributes:
  check_mode:
    support: full
    details:
      - Check mode shows the partition and the image it would write, also when the image is not fetched yet.
  diff_mode:
    support: full
    details:
      - The diff shows the inactive root's release stamp before and after.
  idempotent:
    support: full
options:
  cache_dir:
    description:
      - Where M(osfleet.hup.fetch) keeps the verified OCI layouts on the device. A mount point, or a directory that
        is not empty and has no C(.osfleet-cache) marker, is refused (M(osfleet.hup.fetch) did not make it).
    type: str
    default: /mnt/data/osfleet/images
requirements:
  - On the device, C(mkfs.ext4), GNU C(tar), C(jq), C(sha256sum).
author:
  - osfleet maintainers (@osfleet)
seealso:
  - module: osfleet.hup.fetch
  - module: osfleet.hup.bootfiles
"""

EXAMPLES = r"""
- name: Write 2.113.0 into the inactive root
  osfleet.hup.rootfs:
    catalog: "{{ hup_catalog }}"
    target_version: 2.113.0
  register: hup_rootfs

- name: Show what the inactive root holds now
  ansible.builtin.debug:
    var: hup_rootfs.stamp
"""

RETURN = r"""
stamp:
  description: The release stamp of the inactive root after the task.
  returned: success
  type: dict
  sample: {"device_type": "genericx86-64-ext", "version": "2.113.0", "digest": "sha256:5d0c...", "source": "delta", "written_at": "2026-11-28T18:01:02Z"}
source:
  description: Where the written image came from (V(delta), V(registry), V(fallback)), as the stamp records it.
  returned: success
  type: str
  sample: delta
mode:
  description: V(full) (all layers of the full image) or V(delta) (copy of the active root plus the delta layer); null when nothing was written.
  returned: success
  type: str
  sample: full
partition:
  description: The label of the partition written (or that already held the target).
  returned: always
  type: str
  sample: resin-rootB
actions:
  description: What the module did, or would do in check mode.
  returned: always
  type: list
  elements: str
  sample: ["formatted resin-rootB (/dev/loop3p3) and wrote 2.113.0 from the full image"]
reason:
  description:
    - Why the step failed, without the device's name (which C(msg) starts with).
  returned: failure
  type: str
  sample: "no fetched image of 2.113.0 in /mnt/data/osfleet/images: run osfleet.hup.fetch first"
"""

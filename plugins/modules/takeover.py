#!/usr/bin/python
# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: takeover
short_description: Check a device for the advanced update (takeover) and stage the whole disk image in RAM
version_added: 0.1.0
description:
  - The first part of the advanced host OS update (takeover), for a device whose update method is C(takeover) (see
    M(osfleet.hup.preflight)). That update rewrites the whole disk with the target release's disk image, so the data
    and state partitions are lost; only the files to keep survive.
  - Checks the device first and changes nothing when a check fails. The catalog gives a disk image (C(disk_image) with
    C(url), C(sha256), C(size) and C(raw_size)). The disk is at least C(raw_size) large. RAM (C(MemAvailable)) holds the
    image, the kept files and a reserve. The data partition is clean (C(e2fsck -n) exits below 4, as the reference's
    C(upgrade-takeover.sh) requires). The boot partition has C(config.json). The NetworkManager connections in
    C(/etc/NetworkManager/system-connections) are those of the boot partition, the only copy that survives.
  - With O(state=staged), mounts a RAM filesystem at O(staging_dir) and downloads the disk image there on the device
    (C(curl), resuming a partial download), checks its sha256 before keeping it (a bad one is removed), and copies the
    files to keep from the boot partition (C(config.json), C(system-connections/), C(system-proxy/)) next to it. The disk
    itself is not touched; a power cut loses the staging and the device boots its old OS.
  - With O(state=absent), removes the staging and unmounts its RAM filesystem.
  - This version stops there. Writing the whole disk from the staging, restoring the kept files and booting the new
    layout are not part of the collection yet.
extends_documentation_fragment:
  - osfleet.hup.attributes
  - osfleet.hup.attributes.action_plugin
  - osfleet.hup.attributes.actiongroup_hup
  - osfleet.hup.common
  - osfleet.hup.release
  - osfleet.hup.release.registry
  - osfleet.hup.release.catalog
attributes:
  check_mode:
    support: full
    details:
      - Runs the checks and reports the plan (what would be downloaded, kept and lost); mounts, downloads and copies
        nothing.
  diff_mode:
    support: full
    details:
      - The diff shows the staging record before and after (disk image url, sha256, size, kept files).
  idempotent:
    support: full
    details:
      - A staging whose record names the same disk image and whose kept files match the boot partition's is left alone.
options:
  state:
    description:
      - V(staged) checks the device and stages the disk image and the files to keep in RAM.
      - V(checked) only runs the checks (as check mode does) and fails when one fails.
      - V(absent) removes the staging.
    type: str
    choices: [staged, checked, absent]
    default: staged
  staging_dir:
    description:
      - The directory on the device that becomes a RAM filesystem (tmpfs) holding the staging.
    type: str
    default: /run/osfleet/takeover
notes:
  - The device needs no Python; the step runs on the controller and uses C(sh), C(curl), C(sha256sum), C(mount),
    C(df), C(e2fsck) (when present) and C(jq) on the device.
  - The device downloads the disk image itself from the catalog's C(disk_image.url), as the reference does.
author:
  - osfleet maintainers (@osfleet)
seealso:
  - module: osfleet.hup.preflight
"""

EXAMPLES = r"""
- name: Stage the disk image of the target in RAM (the device keeps running its old OS)
  osfleet.hup.takeover:
    catalog: /srv/hostos/catalog.json
    target_version: 6.1.0
  register: hup_takeover

- name: Show the plan of the advanced update, changing nothing
  osfleet.hup.takeover:
    catalog: /srv/hostos/catalog.json
    target_version: 6.1.0
  check_mode: true
  diff: true

- name: Give the RAM back
  osfleet.hup.takeover:
    catalog: /srv/hostos/catalog.json
    target_version: 6.1.0
    state: absent
"""

RETURN = r"""
plan:
  description: The checks' outcome and the plan of the advanced update.
  returned: success
  type: dict
  contains:
    problems:
      description: Why the device cannot take the advanced update (empty when it can).
      type: list
      elements: str
    keep:
      description: The files of the boot partition that are kept.
      type: list
      elements: str
    lost:
      description: What the whole-disk write loses.
      type: list
      elements: str
    download_bytes:
      description: Bytes still to download (the image size less what an earlier, interrupted download left).
      type: int
    ram_needed:
      description: Bytes of RAM the staging and the device need.
      type: int
    disk_needed:
      description: Bytes the disk must have (the disk image unpacked).
      type: int
    actions:
      description: The steps of the whole advanced update for this device, of which this version carries out the first three.
      type: list
      elements: str
    url:
      description: Where the device downloads the disk image from (the catalog's C(disk_image.url)).
      type: str
    sha256:
      description: The sha256 the downloaded disk image must have.
      type: str
  sample: {"problems": [], "keep": ["config.json"], "download_bytes": 35206130, "ram_needed": 102314994, "disk_needed": 1063256064}
staged:
  description: The staging record on the device (url, sha256, size, the kept files with size and sha256); null when none.
  returned: success
  type: dict
  sample: {"url": "http://127.0.0.1:8080/jetson-xavier-6.1.0.img.gz", "sha256": "d5e4...", "size": 35206130, "keep": []}
downloaded:
  description: Bytes the device downloaded in this run.
  returned: success
  type: int
  sample: 35206130
actions:
  description: What was done (or would be done in check mode).
  returned: always
  type: list
  elements: str
  sample: ["downloaded the disk image of 6.1.0 (35206130 bytes) from http://127.0.0.1:8080/jetson-xavier-6.1.0.img.gz into RAM"]
reason:
  description:
    - Why the step failed, without the device's name (which C(msg) starts with).
  returned: failure
  type: str
  sample: "not enough RAM for the takeover: it needs 264 MiB (the disk image 200 MiB, the kept files and 64 MiB for the device)"
"""

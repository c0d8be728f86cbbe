#!/usr/bin/python
# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: takeover
short_description: The advanced update (takeover) - check a device, stage the whole disk image in RAM, write the whole disk
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
  - With O(state=flashed), writes the whole disk from a staging made by O(state=staged) (refused, nothing written,
    when there is none, when its record names another disk image, or when the staged image's sha256, read again on the
    device right before the write, is not the catalog's). The device stops its services (supervisor, user apps,
    engine); PID 1 moves into the staging RAM filesystem (C(telinit u) executes a stage 2 bound over C(/sbin/init)),
    pivots into it, stops every other process and unmounts the disk's partitions; the decompressed image is written
    onto the whole disk that holds C(resin-boot) and read back; the partition table is re-read (C(partx)); the kept
    files are restored onto the new boot partition and checked; the flash log C(advanced.<datetime>.log) and the
    record C(takeover.json) go to C(/mnt/data/balenahup/) on the new data partition; the device reboots. This runs on
    the device without the SSH session, so a cut link does not stop it. The controller waits for the new boot,
    trusting only the SSH host key the device generated before the write (stage 2 puts it on the new state
    partition), and verifies that the device runs the target, that its partition table is the image's and that the
    kept files are byte-identical to the staged ones. The data and state partitions are lost.
  - The device's SSH host key changes with O(state=flashed). The result's RV(host_key) is the new key, for the
    controller's C(known_hosts) (M(ansible.builtin.known_hosts)); later tasks connect with the inventory's settings.
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
      - Runs the checks and reports the plan (what would be downloaded, kept and lost, and with O(state=flashed) the
        steps of the write); mounts, downloads, copies and writes nothing.
  diff_mode:
    support: full
    details:
      - The diff shows the staging record before and after (disk image url, sha256, size, kept files); with
        O(state=flashed) the running version and the disk's partition layout before and after.
  idempotent:
    support: full
    details:
      - A staging whose record names the same disk image and whose kept files match the boot partition's is left alone.
      - O(state=flashed) on a device that runs the target is changed=false (the layout and the kept files an earlier
        write recorded are checked, a difference fails).
options:
  state:
    description:
      - V(staged) checks the device and stages the disk image and the files to keep in RAM.
      - V(checked) only runs the checks (as check mode does) and fails when one fails.
      - V(absent) removes the staging.
      - V(flashed) writes the whole disk from the staging, waits for the new OS and verifies it. A device that runs the
        target already is left alone (what an earlier write recorded on its data partition is checked).
    type: str
    choices: [staged, checked, absent, flashed]
    default: staged
  flash_timeout:
    description:
      - With O(state=flashed), seconds from the start of the write until the device must be back with the new OS.
    type: int
    default: 900
  connect_timeout:
    description:
      - With O(state=flashed), the ssh C(ConnectTimeout) while waiting for the device.
    type: int
    default: 10
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

- name: Write the whole disk from the staging and boot the target (the data partition is lost)
  osfleet.hup.takeover:
    catalog: /srv/hostos/catalog.json
    target_version: 6.1.0
    state: flashed
  register: hup_flash

- name: Trust the device's new SSH host key from now on
  ansible.builtin.known_hosts:
    name: "{{ ansible_host }}"
    key: "{{ ansible_host }} {{ hup_flash.host_key }}"
  delegate_to: localhost
  when: hup_flash.host_key

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
    host_key:
      description:
        - Where the whole-disk write puts the device's next SSH host key, the one the controller pins for the reconnect
          (RV(host_key)). RV(plan.host_key.path) is the HostKey file the device's sshd reads that lives on the state
          partition (C(resin-state), also through a bind mount such as balenaOS's C(/etc/ssh/hostkeys)),
          RV(plan.host_key.type) its key type.
        - V(null) when the sshd keeps none there; the device is then refused (RV(plan.problems)).
      type: dict
      contains:
        path:
          description: The HostKey file as the device's sshd reads it.
          type: str
        type:
          description: The key type (C(ed25519), C(ecdsa) or C(rsa)), the first the sshd reads in that order.
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
flashed:
  description:
    - With O(state=flashed), the record of the whole-disk write on the device's data partition
      (C(/mnt/data/balenahup/takeover.json)), with the disk image (url, sha256, size), the kept files (path, size, sha256),
      the version, the time, the disk, the image's partition table (name, start, size in sectors), the new host key and
      the flash log's path; null when the disk was not written by this collection.
  returned: with state=flashed, on success
  type: dict
  sample: {"version": "6.1.0", "time": "20261204T203000Z", "disk": "/dev/loop3", "table": [{"name": "resin-boot", "start": 2048, "size": 196608}]}
host_key:
  description: With O(state=flashed), the device's new SSH host key (C(ssh-ed25519 AAAA... root@name)) once this run wrote the disk.
  returned: with state=flashed, on success
  type: str
  sample: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI... root@jx-01"
log:
  description: With O(state=flashed), the on-device flash log (C(advanced.<datetime>.log) on the new data partition).
  returned: with state=flashed, on success
  type: str
  sample: /mnt/data/balenahup/advanced.20261204T203000Z.log
elapsed:
  description: With O(state=flashed), seconds from the start of the write until the new OS answered.
  returned: when the disk was written
  type: float
  sample: 21.4
reason:
  description:
    - Why the step failed, without the device's name (which C(msg) starts with).
  returned: failure
  type: str
  sample: "not enough RAM for the takeover: it needs 264 MiB (the disk image 200 MiB, the kept files and 64 MiB for the device)"
"""

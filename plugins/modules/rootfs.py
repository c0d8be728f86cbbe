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
  - When the catalog gives the release's C(root_listing) (the sha256 of the canonical listing of its whole root, with
    every path, its type, mode, owner, size and file sha256 or link target; see the collection's C(docs/internals.md)),
    the written root is verified against the target release itself, for a delta as for a full image. The device lists
    the written root the same way (leaving out only C(lost+found) and the stamp at its top), and the stamp is not written
    unless that listing has the catalog's sha256. So a delta applied to an active root that is not exactly its base
    release (a file added, removed or changed there, a mode or an owner changed) is refused, naming the entry counts
    and the files that the image's own C(rootfs.sha256) does not name, and the partition keeps no stamp. Listing a
    root of about 800 entries and 60 MB adds 1 to 2.5 seconds to the write on a lab device.
  - Without a C(root_listing) for the release in the catalog, the root is checked only against what the image or delta
    brought (its C(rootfs.sha256) and C(/etc/os-release)), and the result says so (RV(listing_verified=false)).
  - The stamp is removed before anything else is written, so an interrupted write never looks finished.
  - The partition to write is taken from C(/proc/mounts) and the partition labels, never from the bootloader env;
    the script refuses to format the partition mounted at C(/).
  - Nothing writes a root partition that the bootloader env names as the root to boot, armed or not. When the env
    names the inactive root (left by O(osfleet.hup.bootenv#module:state=rolled_back) on a booted, uncommitted device,
    by a health rollback whose reboot failed, or by a run killed after arming), the env is pointed at the running root
    first, disarmed and with the running root's boot files (as a rollback to it, without recording one), and synced;
    only then is the partition formatted. The write script checks the env again on the device and refuses to format
    the partition it names. A device that booted an update it has not committed yet (C(upgrade_available=1) for the
    running root) is refused, because the inactive root is the root its bootloader falls back to.
  - Every path of the image is resolved inside the root being written. A layer never writes through a symbolic link
    that leaves that root (an absolute link, or a C(..) above its top), whether an earlier layer or the delta base left
    it; a layer that writes below such a link is refused. The root and C(/etc/os-release) checks read the written
    root's own files, never the running system's.
  - The release stamp is never taken from the image. A layer that carries C(.osfleet-release.json) is refused before
    anything of it is written, and every failure of the write leaves the partition without a stamp.
  - Nothing is done when the inactive root is already stamped with the target digest. The full image is preferred
    when both it and a delta are cached.
  - An image that unpacks larger than the inactive root (the catalog's C(size_unpacked), as M(osfleet.hup.preflight)
    checks it) is refused before the partition is formatted.
  - On a balenaOS device (O(writer=hostapp), chosen by V(auto) when the running root holds a hostapp) the partition
    is written by the device's own C(hostapp-update -i REF) (never C(-n), never C(-r)), trying O(sources) in order (the
    delta from the running release first). It wipes the partition's engine, pulls the image by digest through the
    C(balena-host) engine (a delta is applied on the image of the active partition), creates the hostapp and runs the new
    OS's hooks, which copy the boot files and arm the bootloader (M(osfleet.hup.bootfiles) and M(osfleet.hup.bootenv)
    then verify their work). It runs detached from the SSH session, so a dropped link does not end it; the step waits
    for it in calls of at most 30 seconds, and a later run attaches to one that still runs. The new hostapp is
    verified by its image id (the catalog's C(image_id)) before the partition is stamped; the stamp is removed first.
    A pull that fails before anything was created tries the next source; a failure after that (the hooks; C(hostapp-update)
    then runs the running OS's hooks to put the boot files and env back) fails the step.
  - With O(hostapp_transport=push) the partition is written by C(hostapp-update -f FILE) from the saved image that
    M(osfleet.hup.fetch) sent to O(hostapp_image_dir). Under the writer lock, before anything is wiped, the archive is
    checked once more (its config is the catalog's C(image_id), each layer its C(diff_id)); a bad one is removed and the
    step fails, the partition untouched (the next fetch sends it again). Once the new hostapp is verified and stamped the
    file is removed (it is of no use after that; a later rewrite gets a new copy from the fetch, out of the controller's
    cache), so the data partition does not keep a second copy of the OS.
extends_documentation_fragment:
  - osfleet.hup.attributes
  - osfleet.hup.attributes.action_plugin
  - osfleet.hup.attributes.actiongroup_hup
  - osfleet.hup.common
  - osfleet.hup.release
  - osfleet.hup.release.registry
  - osfleet.hup.release.registry_auth
  - osfleet.hup.release.catalog
  - osfleet.hup.release.writer
attributes:
  check_mode:
    support: full
    details:
      - Check mode shows the partition and the image it would write, also when the image is not fetched yet (with
        O(assume_fetched), the mode and source the write would then have).
  diff_mode:
    support: full
    details:
      - The diff shows the inactive root's release stamp before and after.
  idempotent:
    support: full
options:
  sources:
    description:
      - On a balenaOS device (O(writer=hostapp)) the sources C(hostapp-update) pulls from, in this order (as
        O(osfleet.hup.fetch#module:sources)); sources that do not apply are skipped. Not used by the export writer, which
        writes the image that M(osfleet.hup.fetch) fetched.
    type: list
    elements: str
    choices: [delta, registry, fallback]
    default: [delta, registry, fallback]
  write_timeout:
    description:
      - On a balenaOS device, the most seconds the step waits for C(hostapp-update). When it still runs then, the step
        fails and C(hostapp-update) goes on on the device; the next run attaches to it.
    type: int
    default: 1800
  assume_fetched:
    description:
      - Check mode only, when the image is not in the cache (check mode fetched nothing); ignored otherwise. The
        source the M(osfleet.hup.fetch) step before it in the same check run would bring the image from (its
        RV(osfleet.hup.fetch#module:source), V(delta), V(registry) or V(fallback); other values are ignored), so that
        RV(mode) and RV(source) say what the real write does.
      - The role C(osfleet.hup.standard) sets it from its fetch step.
    type: str
  cache_dir:
    description:
      - Where M(osfleet.hup.fetch) keeps the verified OCI layouts on the device. A mount point, or a directory that
        is not empty and has no C(.osfleet-cache) marker, is refused (M(osfleet.hup.fetch) did not make it).
    type: str
    default: /mnt/data/osfleet/images
  extra_keep:
    description:
      - Boot-relative paths that M(osfleet.hup.bootfiles) was told to keep back (its O(osfleet.hup.bootfiles#module:extra_keep));
        kept when the running root's boot files are put back because the bootloader env named the inactive root.
    type: list
    elements: str
    default: []
requirements:
  - On a balenaOS device C(hostapp-update); with O(hostapp_transport=push) also C(tar), C(jq), C(sha256sum) (busybox is enough).
  - On the device, C(mkfs.ext4), GNU C(tar), C(jq), C(sha256sum); for a C(root_listing), C(find), C(stat -c), C(readlink),
    C(awk) and C(sort) (busybox or GNU).
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
acted:
  description:
    - On a balenaOS device, the step had started (or attached to) the device's C(hostapp-update) when it failed, so
      the new OS's hooks may have armed the switch (the role's rescue reads the device to tell).
  returned: failure, when the step got that far
  type: bool
  sample: true
stamp:
  description: The release stamp of the inactive root after the task.
  returned: success
  type: dict
  sample: {"device_type": "genericx86-64-ext", "version": "2.113.0", "digest": "sha256:5d0c...", "source": "delta", "written_at": "2026-11-28T18:01:02Z"}
source:
  description:
    - Where the written image came from (V(delta), V(registry), V(fallback)), as the stamp records it.
    - In check mode, with O(assume_fetched), where it would come from.
  returned: success
  type: str
  sample: delta
mode:
  description:
    - V(full) (all layers of the full image) or V(delta) (copy of the active root plus the delta layer); V(hostapp) when
      the device's C(hostapp-update) wrote it; null when nothing was written.
  returned: success
  type: str
  sample: full
listing_verified:
  description:
    - V(true) when the written root was verified against the catalog's C(root_listing) of the release (its canonical
      listing has that sha256), V(false) when the catalog has no C(root_listing) for the release, so the root was checked
      only against what the image or delta brought (its own C(rootfs.sha256) and C(/etc/os-release)).
    - Null when nothing was written (the inactive root already held the target, or check mode).
  returned: success
  type: bool
  sample: true
listing:
  description: The canonical listing of the written root as the device computed it, when it was verified against the
    catalog's C(root_listing); null otherwise.
  returned: success
  type: dict
  sample: {"sha256": "efe058fc9ddf383eb53997fd258724103466325a30146fab553eea3f2b3b78c1", "entries": 789}
  contains:
    sha256:
      description: The sha256 (64 hex digits) of the listing, the catalog's C(root_listing.sha256).
      type: str
      returned: success
    entries:
      description: How many entries (lines) the listing has.
      type: int
      returned: success
writer:
  description: The writer used, V(hostapp) (the device's C(hostapp-update)) or V(export) (see O(writer)).
  returned: success
  type: str
  sample: hostapp
bytes:
  description:
    - The bytes this step pulled (the catalog's size of the source C(hostapp-update) pulled, on a balenaOS device);
      0 for the export writer (M(osfleet.hup.fetch) pulled the image), with O(hostapp_transport=push) (the fetch sent it)
      and when nothing was written. In check mode what the first source would pull.
  returned: success
  type: int
  sample: 3689987
attempts:
  description:
    - On a balenaOS device, the sources C(hostapp-update) tried, in order, with C(ok) and C(error) (in check mode the
      planned ones, with their catalog C(bytes)); empty otherwise. With O(hostapp_transport=push) the one load, with
      C(file) the saved image and C(ref) where the controller got it.
  returned: success
  type: list
  elements: dict
  sample: [{"kind": "delta", "ref": "registry.example.com/osfleet/gx-delta@sha256:4b19...", "digest": "sha256:4b19...", "bytes": 3689987, "ok": true}]
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

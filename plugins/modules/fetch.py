#!/usr/bin/python
# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: fetch
short_description: Fetch the target host OS image onto a balenaOS-style device
version_added: 0.1.0
description:
  - Gets the target release's OS image onto the device's data partition, trying its sources in order, by default
    the delta from the running release, the full image from the primary registry, then from the fallback registry.
  - A delta is tried only when the active root verifiably holds the delta's base release (its release stamp names
    that version with the catalog's digest). The delta's digest says only what the delta brings; the root written
    from it is verified against the target release itself by M(osfleet.hup.rootfs), when the catalog gives the
    release's C(root_listing).
  - The device pulls with C(skopeo copy docker://<registry>/<repository>@<digest> oci:<staging dir>). The layout is
    then checked, C(index.json) must name exactly the catalog's manifest digest and every blob's sha256 must equal its
    name, and only then moved to O(cache_dir)C(/<digest hex>). A failed or interrupted attempt leaves nothing behind,
    and stale staging directories are removed first.
  - Nothing is fetched when the verified layout of the full image or of the usable delta is already in O(cache_dir),
    or when the inactive root is already stamped with the target digest.
  - On a balenaOS device (O(writer=hostapp)) nothing is fetched ahead with O(hostapp_transport=pull), the rootfs step's
    C(hostapp-update) pulls the image. With O(hostapp_transport=push) the controller gets the full image and streams it to
    O(hostapp_image_dir) on the device, checked on both sides (see O(hostapp_transport)). Before sending, the data
    partition must have room for what is left to send, as much again for the load of C(hostapp-update -f), and 16 MiB.
    A mismatch on the device removes the file and fails. An image on the controller that is not the catalog's
    C(image_id) fails the step before anything is sent.
  - After a successful fetch, the other layouts that the fetch made in O(cache_dir) are removed (directories named
    by a digest that hold its C(osfleet-fetch.json)); nothing else there is touched.
  - O(cache_dir) must be a directory of its own. The fetch creates it and marks it with a C(.osfleet-cache) file;
    a mount point (C(/mnt/data), C(/mnt/boot), C(/mnt/state), ...), something that is not a directory, and a
    directory that is not empty and has no marker are refused, by the step and again by the script on the device.
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
      - Check mode reports the sources it would try.
  diff_mode:
    support: full
    details:
      - The diff shows the image cache before and after; in check mode the sources in the order they would be tried,
        each with the bytes it would move (the catalog's size), after a fetch the source that brought the image and
        its bytes. See also RV(source) and RV(bytes).
  idempotent:
    support: full
options:
  sources:
    description:
      - The sources to try, in this order. Sources that do not apply (no delta from the running release, no fallback
        registry) are skipped.
    type: list
    elements: str
    choices: [delta, registry, fallback]
    default: [delta, registry, fallback]
  cache_dir:
    description:
      - Where the verified OCI layouts are kept on the device, a directory of its own that the fetch makes and marks
        (see the description), never a mount point.
    type: str
    default: /mnt/data/osfleet/images
  hostapp_image_cache:
    description:
      - With O(hostapp_transport=push), the directory on the controller that keeps the saved images (one
        C(<image id hex>.tar) per release with its C(.json) record), reused across devices and runs. An archive is moved
        there only once it was verified, and checked again before each send. C(~) is expanded.
      - Default is C($XDG_CACHE_HOME/osfleet-hup/images), else C(~/.cache/osfleet-hup/images).
    type: path
requirements:
  - On the device, C(skopeo), C(jq), C(sha256sum); with O(hostapp_transport=push) on a balenaOS device C(tar), C(jq) and
    C(sha256sum) (busybox is enough) instead.
  - With O(hostapp_transport=push), C(skopeo) on the controller; it reaches the registry with its own credentials
    (C(skopeo login), C(REGISTRY_AUTH_FILE)).
author:
  - osfleet maintainers (@osfleet)
seealso:
  - module: osfleet.hup.rootfs
"""

EXAMPLES = r"""
- name: Fetch the image of 2.113.0
  osfleet.hup.fetch:
    catalog: "{{ hup_catalog }}"
    target_version: 2.113.0
  register: hup_fetch

- name: Report where it came from
  ansible.builtin.debug:
    msg: "{{ hup_fetch.source }}: {{ hup_fetch.bytes }} bytes"

- name: Never use deltas
  osfleet.hup.fetch:
    catalog: "{{ hup_catalog }}"
    target_version: 2.113.0
    sources: [registry, fallback]
"""

RETURN = r"""
writer:
  description:
    - The writer of the device (see O(writer)).
    - With V(hostapp) and O(hostapp_transport=pull) nothing is fetched ahead (RV(bytes) is 0). The rootfs step's
      C(hostapp-update) pulls RV(source) first, and RV(attempts) lists the sources it tries with their catalog C(bytes).
  returned: success
  type: str
  sample: export
transport:
  description: With V(hostapp), the O(hostapp_transport) used, V(pull) or V(push); null for the export writer.
  returned: success
  type: str
  sample: push
saved_image:
  description:
    - With O(hostapp_transport=push), the verified saved image on the device that the rootfs step loads (null when the
      inactive root already holds the target, and otherwise).
    - RV(bytes) are the bytes this task sent to the device (0 when the device held a verified copy; in check mode what
      it would send, the archive's size, or the catalog's C(size_unpacked) when the controller does not hold it yet).
  returned: success
  type: str
  sample: /mnt/data/osfleet/hostapp-images/c06c9f24...tar
source:
  description:
    - The source of the image, V(delta), V(registry) or V(fallback).
    - V(inactive) when nothing was needed because the inactive root already holds the target.
    - In check mode, the source that would be tried first.
  returned: success
  type: str
  sample: delta
ref:
  description: The image reference pulled (for a cached image, the one it was pulled from).
  returned: success
  type: str
  sample: 127.0.0.1:5000/osfleet/genericx86-64-ext-delta@sha256:9a1f...
digest:
  description: The manifest digest of the fetched image (of the delta for a delta).
  returned: success
  type: str
  sample: sha256:9a1f...
layout:
  description: The verified OCI layout on the device (null when the inactive root already holds the target, and in
    check mode when the image would be fetched).
  returned: success
  type: str
  sample: /mnt/data/osfleet/images/9a1f...
bytes:
  description:
    - The bytes this task downloaded (the blobs of the image); 0 when nothing was fetched.
    - In check mode, what the first source would download (its C(size) in the catalog).
  returned: success
  type: int
  sample: 1843200
cached:
  description: True when the image was already there and nothing was downloaded.
  returned: success
  type: bool
  sample: false
attempts:
  description: One entry per source tried, in order (in check mode, per source that would be tried, with its catalog C(bytes)).
  returned: always
  type: list
  elements: dict
  sample: [{"kind": "delta", "ref": "127.0.0.1:5000/osfleet/genericx86-64-ext-delta@sha256:9a1f...", "ok": true, "error": "", "bytes": 1843200}]
actions:
  description: What the module did, or would do in check mode.
  returned: always
  type: list
  elements: str
  sample: ["fetched 2.113.0 into /mnt/data/osfleet/images trying delta (...), registry (...), fallback (...)"]
reason:
  description:
    - Why the step failed, without the device's name (which C(msg) starts with).
  returned: failure
  type: str
  sample: "all sources failed: registry (127.0.0.1:5000/osfleet/genericx86-64-ext@sha256:5d0c...): manifest unknown"
"""

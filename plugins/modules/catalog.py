#!/usr/bin/python
# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: catalog
short_description: Add or refresh a release in a release catalog file from an OS image in a registry
version_added: 0.1.0
description:
  - Describes one balenaOS-style OS release in the release catalog file that the update steps read
    (M(osfleet.hup.preflight) O(osfleet.hup.preflight#module:catalog)), from its image in any registry. Runs on the
    controller (use it in a play on C(localhost), or with C(delegate_to=localhost)); no device is involved.
  - Reads from the registry with C(skopeo), on the controller. What the image says is written as it is, checked
    against digests, never taken from a tag or an option, namely the manifest digest (C(digest)), the config digest
    (C(image_id), the id an engine gives the image), what a pull transfers (C(size), manifest + config + layers),
    the bytes of its files once unpacked (C(size_unpacked), regular files and symlink targets of every layer, a hard
    link once), its architecture (C(arch), in balena's names, C(arm64) is C(aarch64)).
  - Reads from the image's root the release version (C(VERSION) of C(/etc/os-release)), the device type (C(SLUG))
    and the supervisor version the release ships (C(SUPERVISOR_VERSION) of
    C(/etc/balena-supervisor/supervisor.conf)). Only those two files are extracted, from the layers applied in order
    with their whiteouts; symlinks are resolved inside the image root (an absolute target or C(..) never leaves it),
    and each blob's sha256 and size are checked before it is read.
  - What an image cannot say comes from the options, namely the partition layout id (O(layout)), the full disk
    image (O(disk_image)), the deltas from earlier releases (O(deltas)), the supervisor image (O(supervisor_image)).
  - The release of the same device type and version (compared as versions) is refreshed in place, a new one is
    appended. What the image says always replaces the old values; an option that is given replaces the old value, an
    option left out keeps it; keys of other tools (C(x-<tool>)) stay. A device type the catalog does not list yet is
    added with its C(arch) (and the image's C(MACHINE)); an image of another architecture than the catalog's device
    type is refused.
  - The whole new catalog is validated with the collection's own catalog reader before anything is written, and the
    file is replaced atomically (a temporary file in the same directory, fsync, rename; its mode is kept). When the
    catalog already holds exactly this entry, nothing is written and the result is not changed.
extends_documentation_fragment:
  - osfleet.hup.attributes
  - osfleet.hup.attributes.controller_module
attributes:
  check_mode:
    support: full
    details:
      - The image is read from the registry also in check mode; the catalog file is not written.
  diff_mode:
    support: full
    details:
      - The diff is the catalog file's text before and after.
  idempotent:
    support: full
options:
  path:
    description:
      - The catalog file on the controller. A C(.yml) or C(.yaml) file is written as YAML, any other as JSON.
      - When it does not exist it is created, with the image's registry as the C(primary) registry and
        O(registry_insecure) as C(insecure_registries).
    type: path
    required: true
  image:
    description:
      - The release's OS image, C(registry[:port]/repository[:tag][@sha256:<digest>]).
      - The catalog's C(repository) and C(tag) are the reference's (a reference by digest alone keeps the old C(tag)).
        The devices pull C(<catalog registry>/<repository>@<digest>); an image read from a registry that the catalog
        does not name gives a warning.
      - A multi-platform index is resolved to the image of O(arch), or of the only linux platform it lists.
    type: str
    required: true
  device_type:
    description:
      - The device type slug of the release.
      - Default is the image's C(SLUG) of C(/etc/os-release); when both are there they must agree.
    type: str
  version:
    description:
      - The version the image must be (compared as versions with its C(/etc/os-release) C(VERSION)); an image of
        another version is refused. The catalog always lists the image's own version.
    type: str
  arch:
    description:
      - The balena architecture (C(amd64), C(aarch64), C(armv7hf), C(rpi), C(i386)) to pick from a multi-platform
        index; also the architecture the image must have.
    type: str
  layout:
    description:
      - The partition layout id of the release (for example C(balena-gpt-v1)); a different layout than the running
        release's makes the update a takeover.
    type: str
  disk_image:
    description:
      - The full disk image of the release for the advanced (takeover) update.
    type: dict
    suboptions:
      url:
        description:
          - Where the devices download it, C(http) or C(https).
        type: str
        required: true
      sha256:
        description:
          - The sha256 of the file, 64 lower-case hex digits.
        type: str
        required: true
      size:
        description:
          - Its size in bytes.
        type: int
      raw_size:
        description:
          - The size in bytes of the disk it holds once unpacked, which the device's disk must at least have.
        type: int
  deltas:
    description:
      - The delta images to this release, each from one earlier release of the device type. Given, the list replaces
        the release's deltas (an empty list removes them); left out, they are kept.
    type: list
    elements: dict
    suboptions:
      from:
        description:
          - The version the delta starts from.
        type: str
        required: true
      image:
        description:
          - The delta image's reference; its manifest is read from the registry for C(digest) and C(size), and
            C(repository) and C(tag) are its reference's. Otherwise give O(deltas[].digest).
        type: str
      repository:
        description:
          - The delta's repository. Default is the reference's of O(deltas[].image), or else the release's.
        type: str
      tag:
        description:
          - The delta's tag (informational).
        type: str
      digest:
        description:
          - The delta image's manifest digest, C(sha256:<64 hex>), when O(deltas[].image) is not given.
        type: str
      size:
        description:
          - Bytes a pull of the delta transfers, when O(deltas[].image) is not given.
        type: int
  supervisor_image:
    description:
      - The image of the supervisor that the release ships, C(registry/repository:tag). Its manifest digest and size
        are listed in the catalog's C(supervisors) under the version the OS image ships, so that
        M(osfleet.hup.supervisor) can pull it by digest. Sets C(supervisor_repository) when the catalog has none.
    type: str
  registry_insecure:
    description:
      - Talk to the registries over plain HTTP or with unverified TLS (skopeo C(--tls-verify=false)).
      - Default is the catalog's C(insecure_registries), or false for a new catalog.
    type: bool
  registry_username:
    description:
      - The user name to log in to the image's registry with (and to the registries of O(deltas) and
        O(supervisor_image), which must then be the same registry). Default is skopeo's own credentials
        (C(${XDG_RUNTIME_DIR}/containers/auth.json), C(~/.docker/config.json)).
    type: str
  registry_password:
    description:
      - The password of O(registry_username). It reaches skopeo in a private auth file, never on a command line.
    type: str
  registry_auth_file:
    description:
      - A containers-auth.json file with the credentials (skopeo C(--authfile)).
    type: path
  registry_cert_dir:
    description:
      - A directory of C(*.crt) (CA), C(*.cert) and C(*.key) files for the registries' TLS (skopeo C(--cert-dir)).
    type: path
  executable:
    description:
      - The skopeo command on the controller.
    type: str
    default: skopeo
  timeout:
    description:
      - Seconds each skopeo command may take (the image copy is one).
    type: int
    default: 600
notes:
  - The whole image is copied into a private temporary directory on the controller (its size is RV(release.size)),
    its blobs are checked and read there, and the directory is removed at the end.
requirements:
  - skopeo on the controller (meta/ee-bindep.txt)
author:
  - osfleet maintainers (@osfleet)
seealso:
  - module: osfleet.hup.preflight
  - module: osfleet.hup.supervisor
"""

EXAMPLES = r"""
- name: Describe release 2.113.0 of our own registry
  osfleet.hup.catalog:
    path: /srv/fleet/catalog.json
    image: registry.example.com/os/genericx86-64-ext:2.113.0
    layout: balena-gpt-v1
    deltas:
      - from: 2.88.4
        image: registry.example.com/os/genericx86-64-ext-delta:2.88.4-2.113.0
    supervisor_image: registry.example.com/balena-supervisor:v14.11.2
  delegate_to: localhost
  run_once: true

- name: Preview what would change
  osfleet.hup.catalog:
    path: catalog.yml
    image: 127.0.0.1:5000/osfleet/jetson-xavier:6.1.0
    version: 6.1.0
    layout: l4t-r35
    registry_insecure: true
    disk_image:
      url: https://images.example.com/jetson-xavier-6.1.0.img.gz
      sha256: 0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
  check_mode: true
  diff: true
"""

RETURN = r"""
release:
  description:
    - The release entry as the catalog holds it after the run (in check mode, as it would hold it).
  returned: success
  type: dict
  sample:
    device_type: genericx86-64-ext
    version: 2.113.0
    arch: amd64
    layout: balena-gpt-v1
    repository: osfleet/genericx86-64-ext
    tag: 2.113.0
    digest: sha256:66da49a47c7e74ba50aee7e8142d613f921f027dc0b4b09686a7dcd6de51e415
    size: 25785975
    image_id: sha256:c06c9f2453030a8cb4c265d9a8676fcb931c1288f48f1ce6e3aabf6c4463ea1b
    size_unpacked: 60279843
    supervisor_version: 14.11.2
    deltas: []
  contains:
    device_type:
      description: The device type slug.
      type: str
      returned: success
    version:
      description: The release version, the image's C(/etc/os-release) C(VERSION).
      type: str
      returned: success
    arch:
      description: The image's architecture in balena's names.
      type: str
      returned: success
    layout:
      description: The partition layout id (O(layout), or the old entry's).
      type: str
      returned: when known
    repository:
      description: The image's repository.
      type: str
      returned: success
    tag:
      description: The image's tag.
      type: str
      returned: when known
    digest:
      description: The manifest digest.
      type: str
      returned: success
    size:
      description: Bytes a pull transfers (manifest + config + layers).
      type: int
      returned: success
    image_id:
      description: The config digest, the image id an engine gives the image.
      type: str
      returned: success
    size_unpacked:
      description: Bytes of the regular files and symlink targets of all layers, a hard link once.
      type: int
      returned: success
    supervisor_version:
      description: The supervisor version the release ships (its supervisor.conf).
      type: str
      returned: when the image ships a supervisor.conf
    disk_image:
      description: The full disk image, C(url), C(sha256), C(size), C(raw_size).
      type: dict
      returned: when known
    deltas:
      description: The deltas to this release, C(from), C(repository), C(tag), C(digest), C(size).
      type: list
      elements: dict
      returned: success
supervisor:
  description:
    - The C(supervisors) entry of O(supervisor_image), C(version), C(repository), C(tag), C(digest), C(size).
  returned: when O(supervisor_image) is given
  type: dict
  sample:
    version: 14.11.2
    repository: osfleet/balena-supervisor
    tag: v14.11.2
    digest: sha256:0d6c1d8e0b4f7bc2a1a04e8a7c3c39e38ab8e2b3cbb7e8d5b0bd9f8c3e0b1c2d
    size: 1563
path:
  description: The catalog file.
  returned: always
  type: str
  sample: /srv/fleet/catalog.json
actions:
  description:
    - What was done (in check mode, what would be done), in plain sentences; empty when the catalog already held the entry.
  returned: always
  type: list
  elements: str
  sample:
    - add release genericx86-64-ext 2.113.0 (osfleet/genericx86-64-ext@sha256:66da49a4...)
diff:
  description:
    - The catalog file's text before and after (in diff mode).
  returned: changed and in diff mode
  type: dict
  contains:
    before:
      description: The file's text before (empty for a new file).
      type: str
    after:
      description: The file's text after.
      type: str
    before_header:
      description: The file's path.
      type: str
    after_header:
      description: The file's path.
      type: str
"""

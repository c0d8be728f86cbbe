# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The options shared by the steps that need the target release (docs/internals.md §5).

Used with ``extends_documentation_fragment: [osfleet.hup.release, osfleet.hup.release.registry,
osfleet.hup.release.catalog]`` (only the last two where the target release is optional, only the last
where the module has its own release options); the action base builds the
argument spec from these options too (``plugin_utils.action.argspec_from_doc``).
``osfleet.hup.release.registry_auth``: the steps that pull the image; ``registry_password`` is
``no_log`` through ``plugin_utils.action.NO_LOG_OPTIONS`` (DOCUMENTATION cannot say so).
"""

from __future__ import annotations


class ModuleDocFragment:
    """Options naming the release catalog, the target release and the registries."""

    DOCUMENTATION = r"""
options:
  catalog:
    description:
      - The release catalog, a path on the controller or an C(https) URL of a JSON or YAML file
        (docs/internals.md §3). A plain C(http) URL needs O(catalog_sha256) or O(catalog_allow_http).
      - It is read on the controller; the device never sees it.
    type: str
    required: true
  target_version:
    description:
      - The host OS version to update to. Must be a release of O(device_type) in O(catalog).
    type: str
    required: true
"""

    # The options naming the device type and the registries, for every step that needs a release; the
    # steps to which the target release is optional (bootenv, bootfiles, health) document their own
    # optional catalog and target_version and use only this variant.
    REGISTRY = r"""
options:
  device_type:
    description:
      - The device type slug whose release is used.
      - Default is the device's own C(SLUG) from C(/etc/os-release).
    type: str
  registry_insecure:
    description:
      - Talk to the registries over plain HTTP without TLS verification.
      - Default is the catalog's C(insecure_registries).
    type: bool
"""

    # The credentials of the release's registries (osfleet.hup.release.registry_auth), for the steps that pull the
    # image: fetch, and rootfs (a balenaOS device's hostapp-update pulls it).
    REGISTRY_AUTH = r"""
options:
  registry_username:
    description:
      - The username to log in to the release's registries with (the catalog's primary and fallback registries, from
        which the image and its deltas are pulled). Needed for a private registry; without it the registries are used
        anonymously.
      - Requires O(registry_password).
    type: str
  registry_password:
    description:
      - The password (or token) for O(registry_username). Never shown in a result, a log line or the device's run log,
        and never put on a command line of the device or the controller.
      - On the device it is sent on the standard input of the step's script. A balenaOS device logs in with
        C(balena login --password-stdin) into a private directory (C(DOCKER_CONFIG)) that C(hostapp-update) uses and that
        is removed when it ends; on other devices C(skopeo login --password-stdin) writes an auth file (mode 0600, in a
        private directory under C(/run/osfleet)) that the pull uses and that is removed after it. Nothing is kept on the
        device.
      - With O(hostapp_transport=push) the controller's C(skopeo) gets the image with an auth file in a private temporary
        directory of the controller, removed after the copy.
      - A login that fails fails the step before anything is changed, naming the registry and the reason.
    type: str
"""

    # The options that protect the catalog (osfleet.hup.release.catalog), for every step that reads one.
    CATALOG = r"""
options:
  catalog_sha256:
    description:
      - The sha256 of the catalog file's bytes (64 hex digits, C(sha256:) prefix allowed). A catalog whose sha256
        differs is refused, so a changed catalog cannot name other digests or registries.
      - A pinned catalog may be read over plain C(http://).
    type: str
  catalog_allow_http:
    description:
      - Accept a catalog from a plain C(http://) URL that is not pinned with O(catalog_sha256). Without it, such a
        catalog is refused (anyone on the way could change what it names).
    type: bool
    default: false
"""

    # How the inactive root is written (osfleet.hup.release.writer): fetch and rootfs.
    WRITER = r"""
options:
  writer:
    description:
      - How the inactive root partition is written. V(auto) picks it per device from what the probe finds.
      - V(hostapp) on a balenaOS device, whose root partitions hold hostapps (a balena-engine data root and a C(current)
        link). The device's own C(hostapp-update) pulls the image (a delta first) through its C(balena-host) engine and
        writes the partition, and the new OS's hooks copy the boot files and arm the bootloader. Nothing is fetched ahead.
      - V(export) on a generic A/B device, whose root partitions hold the exported root filesystem. The image is fetched
        into O(cache_dir) and unpacked onto the freshly formatted partition. Forcing it on a balenaOS device writes a root
        its bootloader cannot boot (it then falls back to the running OS).
    type: str
    choices: [auto, hostapp, export]
    default: auto
  hostapp_transport:
    description:
      - How the image gets onto a balenaOS device (O(writer=hostapp)); the export writer ignores it.
      - V(pull) has the device's own C(hostapp-update -i REF) pull the image by digest from the registry, a delta first
        (see O(sources)). Nothing is fetched ahead.
      - V(push) is for own-registry and air-gapped fleets, whose devices cannot reach the registry. The fetch step gets
        the full image by digest on the controller (C(skopeo copy docker://REF@DIGEST docker-archive:FILE), which checks
        the manifest against the digest), keeps it in O(osfleet.hup.fetch#module:hostapp_image_cache) and checks there that
        its config is the catalog's C(image_id) and each layer its C(diff_id). It then streams the archive into
        O(hostapp_image_dir) on the device, resuming a send that did not finish and sending nothing when the device holds
        a verified copy, and the device checks the same digests before anything loads it. The rootfs step runs
        C(hostapp-update -f FILE), which checks the archive once more first, and removes the file once it verified and
        stamped the hostapp written from it.
      - A delta does not apply to V(push), which always sends the full image (a balena delta is rebuilt by the device's
        own engine on the image of its active partition). The delta source is skipped.
    type: str
    choices: [pull, push]
    default: pull
  hostapp_image_dir:
    description:
      - With O(hostapp_transport=push), the directory on the device that holds the saved image, a directory of its own
        under C(/mnt/data). Not under C(/mnt/data/resin-data), whose C(tmp) C(hostapp-update -f) deletes after loading.
      - Other saved images there are removed when a new one has been verified.
    type: str
    default: /mnt/data/osfleet/hostapp-images
"""

# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The options shared by the steps that need the target release (docs/internals.md §5).

Used with ``extends_documentation_fragment: [osfleet.hup.release]`` (or ``osfleet.hup.release.optional_target``
where the target release is optional); the action base builds the
argument spec from these options too (``plugin_utils.action.argspec_from_doc``).
"""

from __future__ import annotations


# The options that protect the catalog: in DOCUMENTATION, and alone as CATALOG
# (``osfleet.hup.release.catalog``) for a module that has its own catalog options.
_CATALOG_OPTIONS = r"""
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


class ModuleDocFragment:
    """Options naming the release catalog, the target release and the registries."""

    CATALOG = "options:" + _CATALOG_OPTIONS

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
""" + _CATALOG_OPTIONS

    # The same options for the steps to which the target release is optional (bootenv, bootfiles,
    # health): C(catalog) and C(target_version) are not required there. Derived, not repeated.
    OPTIONAL_TARGET = DOCUMENTATION.replace("    required: true\n", "")

# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Shared ``attributes`` documentation of the osfleet.hup modules.

A step module combines the standard fragment with the variants it needs and sets ``support``
for the remaining attributes itself, for example::

    extends_documentation_fragment:
      - osfleet.hup.attributes
      - osfleet.hup.attributes.action_plugin
      - osfleet.hup.attributes.actiongroup_hup
    attributes:
      check_mode:
        support: full
      diff_mode:
        support: full
      idempotent:
        support: full

A read-only step (such as device_info) uses ``osfleet.hup.attributes.info_module`` instead of
setting ``support`` for check_mode, diff_mode and idempotent. A module that works on the controller
only (catalog, rollout) uses ``osfleet.hup.attributes.controller_module`` instead of
``action_plugin``.
"""

from __future__ import annotations


class ModuleDocFragment:
    """Documentation fragments for the attributes of osfleet.hup modules."""

    # Standard fragment: what check_mode, diff_mode and idempotent mean. Every module uses it.
    DOCUMENTATION = r"""
options: {}
attributes:
  check_mode:
    description: Can run in C(check_mode) and return changed status prediction without modifying the device.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in C(check_mode)), when in diff mode.
  idempotent:
    description:
      - When run twice in a row outside check mode, with the same arguments, the second invocation indicates no change.
      - This assumes that the device controlled or queried by the module has not changed in a relevant way.
      - The state is read from the device every time, never remembered on the controller.
"""

    # For read-only modules (info and checks); use together with the standard fragment.
    INFO_MODULE = r"""
options: {}
attributes:
  check_mode:
    support: full
    details:
      - This action does not modify the device.
  diff_mode:
    support: N/A
    details:
      - This action does not modify the device.
  idempotent:
    support: full
    details:
      - This action does not modify the device.
"""

    # For modules implemented entirely by an action plugin of the same name, which runs on the
    # controller and reaches the device only through its connection with POSIX shell commands.
    ACTION_PLUGIN = r"""
options: {}
attributes:
  action:
    description: Indicates this has a corresponding action plugin so some parts of the options can be executed on the controller.
    support: full
    details:
      - The module is implemented entirely by its action plugin; the module file holds only the documentation.
  platform:
    description: Target OS/families that can be operated against.
    support: full
    platforms: posix
    details:
      - The device needs no Python; it needs a POSIX shell and the tools of a balenaOS-style device
        (busybox, jq, e2fsprogs, flock, ...).
"""

    # For modules implemented entirely by an action plugin that works on the controller only
    # (no device is involved, whatever the task's host is), such as catalog and rollout.
    CONTROLLER_MODULE = r"""
options: {}
attributes:
  action:
    description: Indicates this has a corresponding action plugin so some parts of the options can be executed on the controller.
    support: full
    details:
      - The module is implemented entirely by its action plugin, which runs on the controller; the module file holds only the documentation.
  platform:
    description: Target OS/families that can be operated against.
    support: full
    platforms: posix
    details:
      - Runs on the controller whatever the task's host is; no device is involved.
"""

    # For the step modules listed in the hup action group of meta/runtime.yml.
    ACTIONGROUP_HUP = r"""
options: {}
attributes:
  action_group:
    description: Use C(group/osfleet.hup.hup) in C(module_defaults) to set defaults for this module.
    support: full
    membership:
      - osfleet.hup.hup
"""

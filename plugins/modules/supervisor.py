#!/usr/bin/python
# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: supervisor
short_description: Stop, start or update the supervisor of a balenaOS-style device
version_added: 0.1.0
description:
  - V(stopped) and V(started) run C(systemctl stop|start balena-supervisor) when the service is not already in that
    state. The user application keeps running.
  - V(updated) runs C(update-balena-supervisor -i <registry>/<repository>:v<version>@<digest>) when the running
    supervisor is older than O(version) (compared as versions), trying the catalog's primary registry, then the
    fallback one. A supervisor that is as new or newer is left alone.
  - The image is pulled by its manifest digest, which the catalog's C(supervisors) list gives for the version and
    repository (docs/internals.md §3); a version the catalog names no digest for is refused, never pulled by tag.
  - Each change is verified by probing the device again.
extends_documentation_fragment:
  - osfleet.hup.attributes
  - osfleet.hup.attributes.action_plugin
  - osfleet.hup.attributes.actiongroup_hup
  - osfleet.hup.common
  - osfleet.hup.release.catalog
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
    details:
      - The diff shows the running supervisor version and whether it is active, before and after.
  idempotent:
    support: full
options:
  state:
    description:
      - V(stopped), V(started), or V(updated) to at least O(version).
    type: str
    choices: [started, stopped, updated]
    required: true
  version:
    description:
      - The supervisor version to update to (with or without a leading C(v)), for O(state=updated).
      - Default is the version the inactive root ships (its C(/etc/balena-supervisor/supervisor.conf)). When
        O(target_version) is set and the inactive root does not hold that release (its release stamp names another
        digest), or ships no supervisor.conf, the default is the catalog's C(supervisor_version) of O(target_version).
    type: str
  repository:
    description:
      - The repository of the supervisor images in the registries. Default is the catalog's C(supervisor_repository).
    type: str
  catalog:
    description:
      - The release catalog (path on the controller or URL), for the registries and the defaults of O(repository)
        and O(version). Required for O(state=updated).
    type: str
  target_version:
    description:
      - The host OS release whose catalog C(supervisor_version) is the last default of O(version).
    type: str
  device_type:
    description:
      - The device type of O(target_version). Default is the device's own C(SLUG).
    type: str
  registry_insecure:
    description:
      - Pull over plain HTTP without TLS verification (C(update-balena-supervisor -t)).
      - Default is the catalog's C(insecure_registries).
    type: bool
author:
  - osfleet maintainers (@osfleet)
seealso:
  - module: osfleet.hup.device_info
"""

EXAMPLES = r"""
- name: Stop the supervisor while the update runs (the user application keeps running)
  osfleet.hup.supervisor:
    state: stopped

- name: Update the supervisor to the one the new OS ships
  osfleet.hup.supervisor:
    state: updated
    catalog: "{{ hup_catalog }}"

- name: Start it again
  osfleet.hup.supervisor:
    state: started
"""

RETURN = r"""
supervisor:
  description: The running supervisor.
  returned: always
  type: dict
  contains:
    before:
      description: The running version before the task.
      type: str
      sample: 14.0.8
    after:
      description: The running version after the task.
      type: str
      sample: 14.11.2
    active:
      description: Whether the service is active after the task.
      type: bool
      sample: true
    target:
      description: The version O(state=updated) compared with (null for the other states).
      type: str
      sample: 14.11.2
    image:
      description: The image the supervisor was updated from (null when nothing was pulled).
      type: str
      sample: 127.0.0.1:5000/osfleet/balena-supervisor:v14.11.2@sha256:3f1c...
actions:
  description: What the module did, or would do in check mode.
  returned: always
  type: list
  elements: str
  sample: ["updated the supervisor from 14.0.8 to 14.11.2"]
reason:
  description:
    - Why the step failed, without the device's name (which C(msg) starts with).
  returned: failure
  type: str
  sample: "no supervisor version given, and the inactive root ships no supervisor.conf"
"""

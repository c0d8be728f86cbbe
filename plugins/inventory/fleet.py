# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
name: fleet
short_description: Devices from a fleet file, grouped by ring, device type, site and OS version
version_added: 0.1.0
author: osfleet maintainers (@osfleet)
description:
  - Reads a fleet file (YAML or JSON) that lists the devices of a fleet with their address, port, device type, site, ring,
    tags and connection settings, validates it, and builds the inventory from it.
  - The file must be named C(*.fleet.yml), C(*.fleet.yaml) or C(*.fleet.json) and set O(plugin) to V(osfleet.hup.fleet).
    YAML fleet files work through the default C(auto) inventory plugin; for JSON ones add C(osfleet.hup.fleet) to
    C(enable_plugins) in the C([inventory]) section of C(ansible.cfg) (or E(ANSIBLE_INVENTORY_ENABLED)).
  - Every device is in the group C(fleet) and, where the field is set, in C(ring_<ring>), C(device_type_<type>),
    C(site_<site>), C(os_<version>) and C(tag_<tag>) (characters other than letters, digits and C(_) become C(_)), for
    example C(ring_canary), C(device_type_genericx86_64_ext), C(os_2_113_0).
  - Host variables are C(ansible_host) (the address), C(ansible_port), C(ansible_user), C(ansible_ssh_private_key_file),
    C(ansible_ssh_common_args), C(fleet_address), C(fleet_device_type), C(fleet_site), C(fleet_ring), C(fleet_tags) and,
    when a previous run recorded it, C(fleet_os_version) with C(fleet_os_version_seen) (when) and C(fleet_os_version_record)
    (the file it came from), then the C(vars) of the device's entry in O(devices). O(vars) go to the group C(all).
  - The OS version comes from the newest record found below the O(os_version_from) directories, the C(report.json) files the
    callback C(osfleet.hup.report) writes (field C(version_after) of each device whose C(versions_from) is C(observed), that is
    the run read it on the device; in a report without that field, each device with C(ended)) and
    per-device records C(devices/<device>.json) (fields C(os_version) and C(observed_at)), as a rollout keeps them in its state directory
    (C(hup_rollout_dir); its records name the device C(host) and say which version the rollout last saw it run, and when).
  - A malformed file fails with a message that names the file, the device (its position and name) and the field.
  - Every value read from the file or from the records is marked unsafe, so that it is never templated.
extends_documentation_fragment:
  - ansible.builtin.constructed
options:
  plugin:
    description: Marks the file as a fleet file of this plugin.
    type: str
    required: true
    choices: [osfleet.hup.fleet]
  devices:
    description:
      - The devices, one mapping each. Required fields are C(name) (the inventory host name, letters, digits, C(.),
        C(_), C(-)) and C(address) (host name or IP address). Optional are C(port) (1 to 65535), C(device_type) (a device
        type slug such as C(raspberrypi4-64)), C(site), C(ring) (for example C(canary), C(early), C(broad)), C(tags) (list
        of names), C(user), C(key_file), C(ssh_args) (extra ssh options) and C(vars) (host variables). No other field is
        accepted.
    type: list
    elements: dict
    required: true
  defaults:
    description: Values of the optional device fields (all but C(vars)) for every device that does not set its own.
    type: dict
    default: {}
  vars:
    description: Variables of the group C(all), for example C(hup_catalog).
    type: dict
    default: {}
  os_version_from:
    description:
      - Directories searched (recursively) for the OS version of each device recorded by earlier runs. Relative paths are
        taken from the fleet file's directory. A directory that does not exist is ignored.
    type: list
    elements: path
    default: []
"""

EXAMPLES = r"""
# production.fleet.yml:  ansible-inventory -i production.fleet.yml --graph
plugin: osfleet.hup.fleet
os_version_from:
  - ~/.local/state/osfleet-hup
defaults:
  port: 22222
  user: root
  key_file: ~/.ssh/fleet_ed25519
  device_type: raspberrypi4-64
vars:
  hup_catalog: https://releases.example.com/catalog.json
devices:
  - {name: kiosk-001, address: 10.20.0.11, site: berlin, ring: canary, tags: [kiosk]}
  - {name: kiosk-002, address: 10.20.0.12, site: berlin, ring: early, tags: [kiosk, lte]}
  - name: gate-001
    address: gate-001.example.net
    device_type: jetson-xavier
    site: hamburg
    ring: broad
    vars:
      hup_health_commands: [systemctl is-active user-app]
keyed_groups:
  - key: fleet_site ~ '_' ~ fleet_ring
    prefix: wave
compose:
  hup_device_type: fleet_device_type
"""

from pathlib import Path

from ansible.errors import AnsibleParserError
from ansible.plugins.inventory import BaseInventoryPlugin, Constructable
from ansible.utils.unsafe_proxy import wrap_var

from ansible_collections.osfleet.hup.plugins.plugin_utils.fleet import (
    SUFFIXES,
    FleetError,
    device_groups,
    host_vars,
    parse_fleet,
    recorded_versions,
)


class InventoryModule(BaseInventoryPlugin, Constructable):
    """Builds the inventory from a fleet file (plugin_utils.fleet does the validation)."""

    NAME = "osfleet.hup.fleet"

    def verify_file(self, path: str) -> bool:
        return bool(super().verify_file(path)) and str(path).endswith(SUFFIXES)

    def parse(self, inventory, loader, path, cache=True):  # type: ignore[no-untyped-def]
        super().parse(inventory, loader, path, cache)
        self._read_config_data(path)
        # read again as plain data (the options are trusted as templates; values from the file must not be)
        data = self.loader.load_from_file(path, cache="none")
        try:
            fleet = parse_fleet(data, path)
        except FleetError as exc:
            raise AnsibleParserError(str(exc)) from exc
        versions = recorded_versions(fleet.os_version_from, Path(path).resolve().parent)
        strict = self.get_option("strict")
        self.inventory.add_group("fleet")
        for key, value in fleet.vars.items():
            self.inventory.set_variable("all", key, wrap_var(value))
        for device in fleet.devices:
            name = self.inventory.add_host(wrap_var(device.name))
            version = versions.get(device.name)
            for group in device_groups(device, version):
                self.inventory.add_group(group)
                self.inventory.add_child(group, name)
            hostvars = host_vars(device, version)
            for key, value in hostvars.items():
                self.inventory.set_variable(name, key, wrap_var(value))
            self._set_composite_vars(self.get_option("compose"), hostvars, name, strict=strict)
            self._add_host_to_composed_groups(self.get_option("groups"), hostvars, name, strict=strict)
            self._add_host_to_keyed_groups(self.get_option("keyed_groups"), hostvars, name, strict=strict)

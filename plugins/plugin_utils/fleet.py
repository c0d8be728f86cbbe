# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Private to this collection, no compatibility guarantees.
"""Fleet files for the inventory plugin osfleet.hup.fleet: validation, groups, recorded OS versions.

Pure Python on plain data (the plugin reads the file and wraps what it hands to Ansible as unsafe).
The format is documented in the plugin's DOCUMENTATION and in README.md; every error names the
file, the entry (index and name) and the field.
"""

from __future__ import annotations

import json
import os
import re
import typing as t
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ansible_collections.osfleet.hup.plugins.plugin_utils.report import SCHEMA as REPORT_SCHEMA
from ansible_collections.osfleet.hup.plugins.plugin_utils.report import iso, parse_iso

SUFFIXES = (".fleet.yml", ".fleet.yaml", ".fleet.json")
TOP_KEYS = {"plugin", "devices", "defaults", "vars", "os_version_from",
            "compose", "groups", "keyed_groups", "strict", "leading_separator", "use_extra_vars", "use_vars_plugins"}
DEVICE_KEYS = {"name", "address", "port", "device_type", "site", "ring", "tags", "user", "key_file", "ssh_args", "vars"}
DEFAULT_KEYS = DEVICE_KEYS - {"name", "address", "vars"}
#: at most this many files are read under each os_version_from directory
MAX_RECORD_FILES = 20000

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_ADDRESS = re.compile(r"^[A-Za-z0-9:._%\[\]-]{1,253}$")
_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_VAR = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class FleetError(ValueError):
    """A fleet file that cannot be used; the message names the entry and the field."""


@dataclass
class FleetDevice:
    name: str
    address: str
    port: int | None = None
    device_type: str | None = None
    site: str | None = None
    ring: str | None = None
    tags: list[str] = field(default_factory=list)
    user: str | None = None
    key_file: str | None = None
    ssh_args: str | None = None
    vars: dict[str, t.Any] = field(default_factory=dict)


@dataclass
class Fleet:
    devices: list[FleetDevice]
    vars: dict[str, t.Any]
    os_version_from: list[str]


def group_name(prefix: str, value: str) -> str:
    """``ring_canary``, ``device_type_genericx86_64_ext``, ``os_2_113_0``: valid Ansible group names."""
    return prefix + "_" + re.sub(r"[^A-Za-z0-9_]", "_", value)


def _where(source: str, index: int | None, entry: Mapping[str, t.Any] | None) -> str:
    if index is None:
        return f"fleet file {source}: defaults"
    name = entry.get("name") if isinstance(entry, Mapping) else None
    return f"fleet file {source}: device {index + 1}" + (f" ({name})" if isinstance(name, str) and name else "")


def _check(where: str, key: str, value: t.Any) -> t.Any:
    """The value of one device field, checked; raises FleetError naming ``key``."""

    def bad(why: str) -> FleetError:
        return FleetError(f"{where}: field '{key}': {why}, got {value!r}")

    if key in ("name",) and not (isinstance(value, str) and _NAME.match(value)):
        raise bad("must be a host name (letters, digits, '.', '_', '-'; at most 63)")
    if key == "address" and not (isinstance(value, str) and _ADDRESS.match(value)):
        raise bad("must be a host name or an IP address")
    if key == "port":
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
            raise bad("must be an integer from 1 to 65535")
    if key == "device_type" and not (isinstance(value, str) and _SLUG.match(value)):
        raise bad("must be a device type slug (lower-case letters, digits, '-')")
    if key in ("site", "ring") and not (isinstance(value, str) and _LABEL.match(value)):
        raise bad("must be a name (letters, digits, '.', '_', '-')")
    if key == "tags":
        if not isinstance(value, list) or not all(isinstance(tag, str) and _LABEL.match(tag) for tag in value):
            raise bad("must be a list of names (letters, digits, '.', '_', '-')")
        return list(value)
    if key in ("user", "key_file", "ssh_args") and not (isinstance(value, str) and value.strip()):
        raise bad("must be a non-empty string")
    if key == "vars":
        if not isinstance(value, Mapping) or not all(isinstance(k, str) and _VAR.match(k) for k in value):
            raise bad("must be a mapping of variable names to values")
        return dict(value)
    return value


def parse_fleet(data: t.Any, source: str) -> Fleet:
    """Validate the fleet file's data (a mapping, as read from YAML or JSON)."""
    if not isinstance(data, Mapping):
        raise FleetError(f"fleet file {source}: must be a mapping with 'plugin: osfleet.hup.fleet' and 'devices'")
    unknown = sorted(str(k) for k in data if k not in TOP_KEYS)
    if unknown:
        raise FleetError(f"fleet file {source}: unknown top-level field '{unknown[0]}' (known: {', '.join(sorted(TOP_KEYS))})")
    defaults = data.get("defaults") or {}
    if not isinstance(defaults, Mapping):
        raise FleetError(f"fleet file {source}: field 'defaults': must be a mapping, got {defaults!r}")
    for key, value in defaults.items():
        if key not in DEFAULT_KEYS:
            raise FleetError(f"fleet file {source}: defaults: unknown field '{key}' (known: {', '.join(sorted(DEFAULT_KEYS))})")
        _check(_where(source, None, None), key, value)
    group_vars = data.get("vars") or {}
    if not isinstance(group_vars, Mapping) or not all(isinstance(k, str) and _VAR.match(k) for k in group_vars):
        raise FleetError(f"fleet file {source}: field 'vars': must be a mapping of variable names to values, got {group_vars!r}")
    dirs = data.get("os_version_from") or []
    dirs = [dirs] if isinstance(dirs, str) else dirs
    if not isinstance(dirs, list) or not all(isinstance(d, str) and d for d in dirs):
        raise FleetError(f"fleet file {source}: field 'os_version_from': must be a directory or a list of directories, got {dirs!r}")
    entries = data.get("devices")
    if not isinstance(entries, list) or not entries:
        raise FleetError(f"fleet file {source}: field 'devices': must be a non-empty list of devices, got {entries!r}")
    devices: list[FleetDevice] = []
    seen: dict[str, int] = {}
    for index, entry in enumerate(entries):
        where = _where(source, index, entry)
        if not isinstance(entry, Mapping):
            raise FleetError(f"{where}: must be a mapping with at least 'name' and 'address', got {entry!r}")
        for key in entry:
            if key not in DEVICE_KEYS:
                raise FleetError(f"{where}: unknown field '{key}' (known: {', '.join(sorted(DEVICE_KEYS))})")
        for key in ("name", "address"):
            if key not in entry:
                raise FleetError(f"{where}: field '{key}' is missing")
        values = {key: _check(where, key, value) for key, value in {**defaults, **entry}.items() if value is not None}
        if values["name"] in seen:
            raise FleetError(f"{where}: field 'name': {values['name']!r} is already device {seen[values['name']] + 1}")
        seen[values["name"]] = index
        devices.append(FleetDevice(**values))
    return Fleet(devices, dict(group_vars), list(dirs))


def host_vars(device: FleetDevice, version: Mapping[str, t.Any] | None) -> dict[str, t.Any]:
    """The variables the inventory gives a device (connection, fleet_*, its own vars)."""
    out: dict[str, t.Any] = {"ansible_host": device.address, "fleet_address": device.address,
                             "fleet_tags": list(device.tags)}
    for key, var in (("port", "ansible_port"), ("user", "ansible_user"), ("key_file", "ansible_ssh_private_key_file"),
                     ("ssh_args", "ansible_ssh_common_args"), ("device_type", "fleet_device_type"),
                     ("site", "fleet_site"), ("ring", "fleet_ring")):
        value = getattr(device, key)
        if value is not None:
            out[var] = os.path.expanduser(value) if key == "key_file" else value
    if version:
        out.update(fleet_os_version=version["version"], fleet_os_version_seen=version["seen"], fleet_os_version_record=version["record"])
    out.update(device.vars)
    return out


def device_groups(device: FleetDevice, version: Mapping[str, t.Any] | None) -> list[str]:
    """``fleet``, ``ring_<ring>``, ``device_type_<type>``, ``site_<site>``, ``os_<version>``, ``tag_<tag>``."""
    groups = ["fleet"]
    for prefix, value in (("ring", device.ring), ("device_type", device.device_type), ("site", device.site),
                          ("os", version["version"] if version else None)):
        if value:
            groups.append(group_name(prefix, value))
    groups += [group_name("tag", tag) for tag in device.tags]
    return groups


# --- OS versions recorded by earlier runs -------------------------------------------------------

def _observed(dev: Mapping[str, t.Any]) -> bool:
    """Did the run read the report's device's ``version_after`` on the device? Its ``versions_from``
    says (``observed``; ``record``: a rollout's report lists a device the run did not touch with the
    versions the rollout recorded, no observation of this run). A report from before that field: a
    device the run saw has ``ended``."""
    if "versions_from" in dev:
        return dev["versions_from"] == "observed"
    return bool(dev.get("ended"))


def _observations(path: Path) -> list[tuple[str, str, float]]:
    """(device, version, when) from one report.json or per-device record; [] when it is neither."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    if not isinstance(data, dict):
        return []
    if str(data.get("schema", "")).startswith(REPORT_SCHEMA.rsplit("/", 1)[0] + "/") and isinstance(data.get("devices"), list):
        out = []
        for dev in data["devices"]:
            if isinstance(dev, dict) and dev.get("name") and dev.get("version_after") and _observed(dev):
                when = parse_iso(dev.get("ended"))
                out.append((str(dev["name"]), str(dev["version_after"]), when or path.stat().st_mtime))
        return out
    name = data.get("name") or data.get("device") or data.get("host")  # a rollout's record names it host
    if path.parent.name != "devices" or not name:
        return []
    seen = []
    for part in (data, data.get("revert")):  # a rollout's revert records what it saw in its key revert
        if isinstance(part, dict) and part.get("os_version"):
            when = parse_iso(part.get("observed_at")) if isinstance(part.get("observed_at"), str) else None
            seen.append((when or path.stat().st_mtime, str(part["os_version"])))
    return [(str(name), version, when) for when, version in sorted(seen, key=lambda s: s[0])[-1:]]  # on a tie the revert's


def recorded_versions(directories: t.Iterable[str | os.PathLike[str]], base: Path) -> dict[str, dict[str, t.Any]]:
    """The newest OS version seen per device in the report.json files and per-device records.

    Reads every ``report.json`` (osfleet.hup/report/N) and every ``devices/<device>.json`` record
    (``os_version``, ``observed_at``; the device's ``name``, ``device`` or ``host``, as a rollout's
    state directory has them) below each directory (relative ones are taken from ``base``,
    the fleet file's directory). Result: device -> {version, seen (ISO time), record (path)}.
    """
    best: dict[str, tuple[float, str, str]] = {}
    for directory in directories:
        root = Path(os.path.expanduser(str(directory)))
        root = (root if root.is_absolute() else base / root).resolve()
        if not root.is_dir():
            continue
        paths = (Path(dirpath) / name for dirpath, dirnames, filenames in os.walk(root) if not dirnames.sort()
                 for name in sorted(filenames)
                 if name == "report.json" or (name.endswith(".json") and Path(dirpath).name == "devices"))
        for count, path in enumerate(paths):
            if count >= MAX_RECORD_FILES:
                break
            for device, version, when in _observations(path):
                if device not in best or when >= best[device][0]:
                    best[device] = (when, version, str(path))
    return {dev: {"version": version, "seen": iso(when), "record": record} for dev, (when, version, record) in best.items()}

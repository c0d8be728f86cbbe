# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fleet files: validation and groups (plugin_utils.fleet), and ansible-inventory through osfleet.hup.fleet."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import typing as t
from pathlib import Path

import pytest
import yaml

from ansible_collections.osfleet.hup.plugins.plugin_utils.fleet import (
    FleetError,
    device_groups,
    host_vars,
    parse_fleet,
    recorded_versions,
)

ANSIBLE_INVENTORY = str(Path(sys.executable).parent / "ansible-inventory")

FLEET: dict[str, t.Any] = {
    "plugin": "osfleet.hup.fleet",
    "os_version_from": ["state"],
    "defaults": {"port": 22222, "user": "root", "key_file": "~/.ssh/fleet", "device_type": "raspberrypi4-64", "site": "berlin"},
    "vars": {"hup_catalog": "/srv/catalog.json"},
    "devices": [
        {"name": "kiosk-001", "address": "10.20.0.11", "ring": "canary", "tags": ["kiosk"]},
        {"name": "kiosk-002", "address": "10.20.0.12", "ring": "early", "tags": ["kiosk", "lte"], "port": 2222},
        {"name": "gate-001", "address": "gate-001.example.net", "device_type": "jetson-xavier", "site": "hamburg",
         "ring": "broad", "ssh_args": "-o ProxyJump=bastion", "vars": {"hup_health_commands": ["true"], "evil": "{{ lookup('pipe', 'id') }}"}},
    ],
    "keyed_groups": [{"key": "fleet_site ~ '_' ~ fleet_ring", "prefix": "wave"}],
    "compose": {"hup_device_type": "fleet_device_type"},
}


def fleet(**changes: t.Any) -> dict[str, t.Any]:
    data = json.loads(json.dumps(FLEET))
    data.update(changes)
    return data


def device_change(index: int, **changes: t.Any) -> dict[str, t.Any]:
    data = fleet()
    data["devices"][index].update(changes)
    return data


# --- parsing and validation ---------------------------------------------------------------------

def test_defaults_apply_unless_the_device_sets_its_own() -> None:
    parsed = parse_fleet(fleet(), "f.fleet.yml")
    one, two, gate = parsed.devices
    assert (one.port, two.port, gate.port) == (22222, 2222, 22222)
    assert (one.device_type, gate.device_type, gate.site, one.site) == ("raspberrypi4-64", "jetson-xavier", "hamburg", "berlin")
    assert parsed.vars == {"hup_catalog": "/srv/catalog.json"} and parsed.os_version_from == ["state"]


def test_host_vars_and_groups() -> None:
    gate = parse_fleet(fleet(), "f").devices[2]
    hv = host_vars(gate, {"version": "6.1.0", "seen": "2026-12-01T10:00:00.000Z", "record": "/r/report.json"})
    assert hv["ansible_host"] == "gate-001.example.net" and hv["ansible_port"] == 22222 and hv["ansible_user"] == "root"
    assert hv["ansible_ssh_private_key_file"] == os.path.expanduser("~/.ssh/fleet") and hv["ansible_ssh_common_args"] == "-o ProxyJump=bastion"
    assert (hv["fleet_device_type"], hv["fleet_site"], hv["fleet_ring"], hv["fleet_os_version"]) == ("jetson-xavier", "hamburg", "broad", "6.1.0")
    assert hv["hup_health_commands"] == ["true"]
    assert device_groups(gate, {"version": "6.1.0+rev1"}) == ["fleet", "ring_broad", "device_type_jetson_xavier", "site_hamburg", "os_6_1_0_rev1"]
    one = parse_fleet(fleet(), "f").devices[0]
    assert device_groups(one, None) == ["fleet", "ring_canary", "device_type_raspberrypi4_64", "site_berlin", "tag_kiosk"]
    assert "fleet_os_version" not in host_vars(one, None)


@pytest.mark.parametrize(("data", "message"), [
    (device_change(1, port="22"), "device 2 (kiosk-002): field 'port': must be an integer from 1 to 65535, got '22'"),
    (device_change(1, port=70000), "device 2 (kiosk-002): field 'port'"),
    (device_change(1, port=True), "device 2 (kiosk-002): field 'port'"),
    (device_change(0, address="10.0.0.1; reboot"), "device 1 (kiosk-001): field 'address': must be a host name or an IP address"),
    (device_change(2, device_type="Jetson Xavier"), "device 3 (gate-001): field 'device_type': must be a device type slug"),
    (device_change(0, tags="kiosk"), "device 1 (kiosk-001): field 'tags': must be a list of names"),
    (device_change(0, ring="can ary"), "device 1 (kiosk-001): field 'ring'"),
    (device_change(0, vars={"not a var": 1}), "device 1 (kiosk-001): field 'vars': must be a mapping of variable names"),
    (device_change(0, colour="red"), "device 1 (kiosk-001): unknown field 'colour'"),
    (device_change(0, name="kiosk-002"), "device 2 (kiosk-002): field 'name': 'kiosk-002' is already device 1"),
    (device_change(0, name="-x"), "device 1 (-x): field 'name': must be a host name"),
    (fleet(devices=[{"name": "a", "address": "x"}, {"name": "a", "address": "y"}]), "device 2 (a): field 'name': 'a' is already device 1"),
    (fleet(devices=[{"address": "10.0.0.1"}]), "device 1: field 'name' is missing"),
    (fleet(devices=[{"name": "a"}]), "device 1 (a): field 'address' is missing"),
    (fleet(devices=["a"]), "device 1: must be a mapping"),
    (fleet(devices=[]), "field 'devices': must be a non-empty list"),
    (fleet(defaults={"port": 0}), "defaults: field 'port'"),
    (fleet(defaults={"name": "x"}), "defaults: unknown field 'name'"),
    (fleet(vars=["a"]), "field 'vars': must be a mapping"),
    (fleet(os_version_from=[1]), "field 'os_version_from'"),
    (fleet(hosts={}), "unknown top-level field 'hosts'"),
])
def test_malformed_files_name_the_entry_and_the_field(data: dict[str, t.Any], message: str) -> None:
    with pytest.raises(FleetError) as err:
        parse_fleet(data, "prod.fleet.yml")
    assert str(err.value).startswith("fleet file prod.fleet.yml: ") and message in str(err.value), str(err.value)


def _report(path: Path, ended: str, devices: list[tuple[str, str | None]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"schema": "osfleet.hup/report/1", "run": {"ended": ended},
                                "devices": [{"name": n, "version_after": v, "ended": ended} for n, v in devices]}))


def test_recorded_versions_take_the_newest_record(tmp_path: Path) -> None:
    _report(tmp_path / "state/rollouts/r1/report.json", "2026-12-01T10:00:00Z", [("a", "2.88.4"), ("b", "2.88.4")])
    _report(tmp_path / "state/rollouts/r2/report.json", "2026-12-02T10:00:00Z", [("a", "2.113.0"), ("b", None)])
    (tmp_path / "state/rollouts/r3/devices").mkdir(parents=True)
    (tmp_path / "state/rollouts/r3/devices/c.json").write_text(json.dumps({"name": "c", "os_version": "2.114.1", "observed_at": "2026-12-03T00:00:00Z"}))
    (tmp_path / "state/rollouts/r3/devices/broken.json").write_text("{not json")
    (tmp_path / "state/other.json").write_text(json.dumps({"schema": "something else", "devices": [{"name": "a", "version_after": "1"}]}))
    found = recorded_versions(["state", str(tmp_path / "missing")], tmp_path)
    assert {k: v["version"] for k, v in found.items()} == {"a": "2.113.0", "b": "2.88.4", "c": "2.114.1"}
    assert found["a"]["record"] == str(tmp_path / "state/rollouts/r2/report.json") and found["a"]["seen"] == "2026-12-02T10:00:00.000Z"


def test_a_report_s_device_the_run_did_not_see_is_no_observation(tmp_path: Path) -> None:
    """A rollout run's report lists every device of the rollout, those the run did not touch with
    the versions the rollout recorded (no ``ended``): the record stays the observation."""
    (tmp_path / "r/devices").mkdir(parents=True)
    (tmp_path / "r/devices/b.json").write_text(json.dumps({"name": "b", "os_version": "2.88.4", "observed_at": "2026-12-01T00:00:00Z"}))
    (tmp_path / "r/report").mkdir()
    (tmp_path / "r/report/report.json").write_text(json.dumps({
        "schema": "osfleet.hup/report/1", "run": {"ended": "2026-12-02T10:00:00Z"},
        "devices": [{"name": "a", "version_after": "2.113.0", "ended": "2026-12-02T09:59:00Z"},
                    {"name": "b", "version_after": "2.88.4", "ended": None}]}))
    found = recorded_versions([str(tmp_path / "r")], tmp_path)
    assert found["b"] == {"version": "2.88.4", "seen": "2026-12-01T00:00:00.000Z", "record": str(tmp_path / "r/devices/b.json")}, found
    assert found["a"]["record"] == str(tmp_path / "r/report/report.json")


def test_a_report_s_device_with_recorded_versions_is_no_observation_also_when_the_run_tried_it(tmp_path: Path) -> None:
    """``versions_from`` says where a report's versions came from: ``record`` (the rollout's record,
    e.g. of a device this run deferred: it tried it, so it has ``ended``) is no observation of the
    run, ``observed`` is; a report without the field is read as before (test above)."""
    (tmp_path / "r/devices").mkdir(parents=True)
    (tmp_path / "r/devices/b.json").write_text(json.dumps({"name": "b", "os_version": "2.88.4", "observed_at": "2026-12-01T00:00:00Z"}))
    (tmp_path / "r/report").mkdir()
    (tmp_path / "r/report/report.json").write_text(json.dumps({
        "schema": "osfleet.hup/report/1", "run": {"ended": "2026-12-02T10:00:00Z"},
        "devices": [{"name": "a", "version_after": "2.113.0", "versions_from": "observed", "ended": "2026-12-02T09:59:00Z"},
                    {"name": "b", "version_after": "2.113.0", "versions_from": "record", "ended": "2026-12-02T09:58:00Z"}]}))
    found = recorded_versions([str(tmp_path / "r")], tmp_path)
    assert found["b"] == {"version": "2.88.4", "seen": "2026-12-01T00:00:00.000Z", "record": str(tmp_path / "r/devices/b.json")}, found
    assert found["a"] == {"version": "2.113.0", "seen": "2026-12-02T09:59:00.000Z", "record": str(tmp_path / "r/report/report.json")}


# --- ansible-inventory through the plugin -------------------------------------------------------

def plain(value: t.Any) -> t.Any:
    """ansible-inventory's JSON without the unsafe markers."""
    if isinstance(value, dict):
        if list(value) == ["__ansible_unsafe"]:
            return value["__ansible_unsafe"]
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def inventory(path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([ANSIBLE_INVENTORY, "-i", str(path), *args], capture_output=True, text=True, check=False, timeout=120,
                          env={**os.environ, "ANSIBLE_NOCOLOR": "1", **(env or {})}, cwd=path.parent)


def test_ansible_inventory_list_builds_the_documented_groups(tmp_path: Path) -> None:
    _report(tmp_path / "state/r1/report.json", "2026-12-01T10:00:00Z", [("kiosk-001", "2.113.0"), ("gate-001", "6.1.0")])
    path = tmp_path / "prod.fleet.yml"
    path.write_text(yaml.safe_dump(fleet()))
    proc = inventory(path, "--list", env={"ANSIBLE_INVENTORY_UNPARSED_FAILED": "1"})
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)

    def hosts(group: str) -> list[str]:
        return sorted(data.get(group, {}).get("hosts", []))

    assert hosts("fleet") == ["gate-001", "kiosk-001", "kiosk-002"]
    assert hosts("ring_canary") == ["kiosk-001"] and hosts("ring_early") == ["kiosk-002"] and hosts("ring_broad") == ["gate-001"]
    assert hosts("device_type_raspberrypi4_64") == ["kiosk-001", "kiosk-002"] and hosts("device_type_jetson_xavier") == ["gate-001"]
    assert hosts("site_berlin") == ["kiosk-001", "kiosk-002"] and hosts("tag_lte") == ["kiosk-002"]
    assert hosts("os_2_113_0") == ["kiosk-001"] and hosts("os_6_1_0") == ["gate-001"] and "os_" not in "".join(data["kiosk-002"] if "kiosk-002" in data else "")
    assert hosts("wave_berlin_canary") == ["kiosk-001"] and hosts("wave_hamburg_broad") == ["gate-001"]  # keyed_groups
    raw = data["_meta"]["hostvars"]
    # ansible-inventory --list shows an unsafe value as {"__ansible_unsafe": value}: every string from the file is one
    assert raw["gate-001"]["evil"] == {"__ansible_unsafe": "{{ lookup('pipe', 'id') }}"}
    assert raw["kiosk-001"]["ansible_host"] == {"__ansible_unsafe": "10.20.0.11"}
    hostvars = plain(raw)
    assert hostvars["kiosk-002"]["ansible_port"] == 2222 and hostvars["kiosk-001"]["hup_device_type"] == "raspberrypi4-64"  # compose
    assert hostvars["gate-001"]["evil"] == "{{ lookup('pipe', 'id') }}"  # never templated
    assert "fleet_os_version" not in hostvars["kiosk-002"] and hostvars["gate-001"]["fleet_os_version"] == "6.1.0"
    assert hostvars["kiosk-001"]["hup_catalog"] == "/srv/catalog.json"  # vars: of the group all
    graph = inventory(path, "--graph")
    assert graph.returncode == 0 and "@ring_canary:\n  |  |--kiosk-001" in graph.stdout, graph.stdout


def test_a_json_fleet_file_needs_the_plugin_enabled(tmp_path: Path) -> None:
    path = tmp_path / "prod.fleet.json"
    path.write_text(json.dumps(fleet()))
    proc = inventory(path, "--list", env={"ANSIBLE_INVENTORY_ENABLED": "osfleet.hup.fleet", "ANSIBLE_INVENTORY_UNPARSED_FAILED": "1"})
    assert proc.returncode == 0, proc.stderr
    assert sorted(json.loads(proc.stdout)["ring_early"]["hosts"]) == ["kiosk-002"]


def test_a_malformed_file_fails_with_the_entry_and_the_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.fleet.yml"
    path.write_text(yaml.safe_dump(device_change(1, port="ssh")))
    proc = inventory(path, "--list", env={"ANSIBLE_INVENTORY_UNPARSED_FAILED": "1"})
    assert proc.returncode != 0
    assert f"fleet file {path}: device 2 (kiosk-002): field 'port': must be an integer from 1 to 65535, got 'ssh'" in proc.stderr, proc.stderr


def test_other_file_names_are_not_fleet_files(tmp_path: Path) -> None:
    path = tmp_path / "prod.yml"
    path.write_text(yaml.safe_dump(fleet()))
    proc = inventory(path, "--list", env={"ANSIBLE_INVENTORY_UNPARSED_FAILED": "1"})
    assert proc.returncode != 0 and "fleet" not in json.loads(proc.stdout or "{}")


def test_a_rollout_s_records_give_the_version_the_device_was_seen_running(tmp_path: Path) -> None:
    """The records osfleet.hup.rollout writes (phase record) are what recorded_versions reads:
    the device named ``host``, ``os_version`` as the rollout last saw it run, ``observed_at``."""
    from ansible_collections.osfleet.hup.plugins.action.rollout import ActionModule
    from ansible_collections.osfleet.hup.plugins.plugin_utils.rollout_store import RolloutDir

    action = ActionModule.__new__(ActionModule)  # the phase alone, without a task around it
    action.rdir, action.pid, action.dry = RolloutDir(str(tmp_path / "r1")), os.getpid(), False
    action.rdir.acquire(action.pid, "r1")

    def record(host: str, status: str, **facts: str) -> dict[str, t.Any]:
        return action.phase_record({"phase": "record", "host": host, "status": status, "facts": facts, "rollout_id": "r1"}).data["record"]

    started = record("dev-1", "in_progress", wave="canary", from_version="2.88.4", to_version="2.113.0", os_version="2.88.4")
    assert recorded_versions([str(tmp_path)], tmp_path)["dev-1"] == {
        "version": "2.88.4", "seen": started["observed_at"], "record": action.rdir.device_file("dev-1")}
    record("dev-2", "in_progress", wave="canary", from_version="2.88.4", to_version="2.113.0", os_version="2.88.4")
    done = record("dev-1", "committed", wave="canary", os_version="2.113.0")
    record("dev-2", "failed", wave="canary", reason="rolled back (health)", os_version="2.88.4")
    record("dev-2", "failed", wave="canary", reason="the device went away")  # nothing seen: the last sighting stays
    found = recorded_versions([str(tmp_path)], tmp_path)
    assert {k: v["version"] for k, v in found.items()} == {"dev-1": "2.113.0", "dev-2": "2.88.4"}
    assert found["dev-1"]["seen"] == done["observed_at"] and done["to_version"] == "2.113.0" and done["status"] == "committed"


def test_a_reverted_device_is_seen_running_the_release_it_went_back_to(tmp_path: Path) -> None:
    """A revert keeps its record in the device record's key ``revert`` (the update's record stays):
    its ``os_version`` is the newer sighting, so the fleet groups the device by the old release."""
    from ansible_collections.osfleet.hup.plugins.action.rollout import ActionModule
    from ansible_collections.osfleet.hup.plugins.plugin_utils.rollout_store import RolloutDir

    action = ActionModule.__new__(ActionModule)
    action.rdir, action.pid, action.dry = RolloutDir(str(tmp_path / "r1")), os.getpid(), False
    action.rdir.acquire(action.pid, "r1")

    def record(status: str, action_: str = "run", **facts: str) -> dict[str, t.Any]:
        return action.phase_record({"phase": "record", "host": "dev-1", "status": status, "facts": facts, "rollout_id": "r1",
                                    "action": action_}).data["record"]

    record("in_progress", wave="canary", from_version="2.88.4", to_version="2.113.0", os_version="2.88.4")
    record("committed", wave="canary", os_version="2.113.0")
    assert recorded_versions([str(tmp_path)], tmp_path)["dev-1"]["version"] == "2.113.0"
    record("in_progress", "revert", wave="canary", from_version="2.113.0", to_version="2.88.4")
    done = record("committed", "revert", wave="canary", os_version="2.88.4")
    assert done["status"] == "committed" and done["revert"]["status"] == "reverted", done
    found = recorded_versions([str(tmp_path)], tmp_path)["dev-1"]
    assert (found["version"], found["seen"]) == ("2.88.4", done["revert"]["observed_at"]), found

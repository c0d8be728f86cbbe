# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""labctl fault NAME health|boot|registry|full|clear on real lab devices of both profiles.

What the lab itself makes of a fault: the status, the device's view (the registries refused while
SSH, the host and the other devices still reach them; /mnt/data full; the running root untouched
by health and boot), that it outlives a reboot, that clear undoes it exactly, and bad input. What
an update with the collection makes of it (rolled back, altboot, fetch and preflight refused):
tests/integration/test_lab_faults.py.

One lab of one ab and one balenaos device for the module; each test leaves its device without a
fault (clear, also after a failure).
"""
from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator

import pytest
from conftest import Device, LabHandle, bring_up, labctl, unique_prefix

from osfleet_lab.faults import FILLER, FULL_LEAVE_MIB
from osfleet_lab.util import cgroup2_root

PROFILES = ("ab", "balenaos")
HEALTHCHECK = "/usr/lib/balena/balena-healthcheck"


@pytest.fixture(scope="module")
def fleet() -> Iterator[LabHandle]:
    """One ab device (``-x86-01``) and one balenaos device (``-x86-02``)."""
    prefix = unique_prefix("flt")
    try:
        handle = bring_up(prefix, 1, "--profile", "ab")
        labctl("up", "--prefix", prefix, "--devices", "1", "--profile", "balenaos")
        yield handle
    finally:
        labctl("down", "--prefix", prefix, check=False)


def device_of(fleet: LabHandle, profile: str) -> Device:
    return fleet.devices()[PROFILES.index(profile)]


@pytest.fixture
def cleared(fleet: LabHandle) -> Iterator[None]:
    yield
    for device in fleet.devices():
        fleet.labctl("fault", device.name, "clear", check=False)


def status_row(fleet: LabHandle, device: Device) -> dict:
    rows = json.loads(fleet.labctl("status", "--json").stdout)
    return next(r for r in rows if r["device"] == device.name)


def services(fleet: LabHandle) -> list[str]:
    """host:port of every service of the lab (registries, HTTP server)."""
    data = json.loads(fleet.labctl("services").stdout)
    return [*data["registries"].values(), data["http"].removeprefix("http://")]


def reach(device: Device, addr: str) -> int:
    """curl's exit status for http://addr/ from the device (0: an HTTP answer, 7: refused)."""
    rc, _out, _err = device.run(f"curl -s -o /dev/null -m 5 http://{addr}/")
    return rc


def host_reaches(addr: str) -> bool:
    return subprocess.run(["curl", "-s", "-o", "/dev/null", "-m", "5", f"http://{addr}/"], check=False).returncode == 0


def fault_rules(fleet: LabHandle) -> list[str]:
    out = subprocess.run(["iptables", "-w", "-S", "OUTPUT"], capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if f"osfleet-lab {fleet.prefix}/" in line]


def data_free_kib(device: Device) -> int:
    return int(device.check("df -Pk /mnt/data | awk 'NR == 2 { print $4 }'"))


def console_since_last_boot(device: Device) -> str:
    return device.console().rsplit("\nBOOT ", 1)[-1]


def test_bad_input_names_the_device_and_changes_nothing(fleet: LabHandle) -> None:
    device = fleet.devices()[0]
    before = (fleet.dir / "state.json").read_text()
    proc = fleet.labctl("fault", "no-such-device", "health", check=False)
    assert proc.returncode == 2 and "no device 'no-such-device'" in proc.stderr, proc.stderr
    proc = fleet.labctl("fault", device.name, "meltdown", check=False)
    assert proc.returncode == 2, proc.stderr
    assert f"{device.name}: unknown fault kind 'meltdown' (kinds: health, boot, registry, full; or clear)" in proc.stderr
    proc = fleet.labctl("fault", device.name, check=False)
    assert proc.returncode == 2 and "kind" in proc.stderr, proc.stderr
    assert (fleet.dir / "state.json").read_text() == before
    assert not (fleet.dir / "devices" / device.name / "fault.env").exists()
    assert not fault_rules(fleet)
    assert status_row(fleet, device)["fault"] == []
    assert fleet.labctl("fault", device.name, "clear").stdout.strip() == f"{device.name}: has no fault"


@pytest.mark.parametrize("profile", PROFILES)
def test_registry_fault_refuses_the_services_to_this_device_only(fleet: LabHandle, profile: str, cleared: None) -> None:
    device, other = device_of(fleet, profile), device_of(fleet, PROFILES[1 - PROFILES.index(profile)])
    addrs = services(fleet)
    assert all(reach(device, a) == 0 for a in addrs), "the device reaches the services before the fault"
    out = fleet.labctl("fault", device.name, "registry").stdout
    assert f"{device.name}: fault registry set" in out, out
    assert status_row(fleet, device)["fault"] == ["registry"]
    assert status_row(fleet, other)["fault"] == []
    table = fleet.labctl("status").stdout.splitlines()
    assert table[0].split()[-1] == "FAULT"
    assert next(line for line in table if line.startswith(device.name)).split()[-1] == "registry"
    cgroup = cgroup2_root()
    assert cgroup is not None
    assert device.check("cat /proc/self/cgroup").strip().endswith(f"/osfleet-lab.{device.name}.{device.port}")
    for addr in addrs:
        assert reach(device, addr) == 7, f"{device.name} still reaches {addr}"  # refused: curl's "couldn't connect"
        assert reach(other, addr) == 0, f"{other.name} lost {addr}"
        assert host_reaches(addr), f"the host lost {addr}"
    assert len(fault_rules(fleet)) == len(addrs)
    # the fault outlives a reboot (every boot runs in the device's cgroup); SSH works throughout
    boot = device.boot_id()
    fleet.labctl("reboot", device.name)
    assert device.boot_id() != boot
    assert all(reach(device, a) == 7 for a in addrs), "the fault did not outlive the reboot"
    out = fleet.labctl("fault", device.name, "clear").stdout
    assert out.strip() == f"{device.name}: cleared the faults registry", out
    assert all(reach(device, a) == 0 for a in addrs), "clear did not give the services back"
    assert not fault_rules(fleet)
    assert status_row(fleet, device)["fault"] == []


@pytest.mark.parametrize("profile", PROFILES)
def test_full_fault_fills_the_data_partition_and_clear_gives_it_back(fleet: LabHandle, profile: str, cleared: None) -> None:
    device = device_of(fleet, profile)
    free_before = data_free_kib(device)
    assert free_before > 100 * 1024
    out = fleet.labctl("fault", device.name, "full").stdout
    assert f"{device.name}: fault full set ({FILLER} takes" in out, out
    free = data_free_kib(device)
    assert FULL_LEAVE_MIB * 1024 - 1024 <= free <= FULL_LEAVE_MIB * 1024, free
    assert status_row(fleet, device)["fault"] == ["full"]
    record = json.loads((fleet.dir / "state.json").read_text())["devices"][device.name]["faults"]["full"]
    assert record["file"] == FILLER and record["free_kib_before"] == free_before, record
    # a second full is a no-op; full and registry go together
    assert "has the fault full already" in fleet.labctl("fault", device.name, "full").stdout
    fleet.labctl("fault", device.name, "registry")
    assert status_row(fleet, device)["fault"] == ["full", "registry"]
    fleet.labctl("reboot", device.name)
    assert data_free_kib(device) <= FULL_LEAVE_MIB * 1024, "the filler did not outlive the reboot"
    out = fleet.labctl("fault", device.name, "clear").stdout
    assert out.startswith(f"{device.name}: cleared the faults full (") and out.rstrip().endswith("registry"), out
    assert device.run(f"test -e {FILLER}")[0] == 1, "the filler is still there"
    # the same free space as before (the user application's heartbeat log grows a little meanwhile)
    assert abs(data_free_kib(device) - free_before) <= 256, (free_before, data_free_kib(device))
    assert status_row(fleet, device)["fault"] == [] and not fault_rules(fleet)


@pytest.mark.parametrize("profile", PROFILES)
def test_health_and_boot_faults_spare_the_running_root(fleet: LabHandle, profile: str, cleared: None) -> None:
    """Set on the running root, health and boot hit only the other root (the next OS: the
    update-level checks are in tests/integration/test_lab_faults.py): the running one reboots as
    before, its health check passes. They exclude each other."""
    device = device_of(fleet, profile)
    fault_env = fleet.dir / "devices" / device.name / "fault.env"
    assert device.booted_root() == "resin-rootA"
    for kind in ("health", "boot"):
        out = fleet.labctl("fault", device.name, kind).stdout
        assert f"{device.name}: fault {kind} set (every root but resin-rootA boots with" in out, out
        assert fault_env.read_text() == f"kinds={kind}\nroot=resin-rootA\n"
        assert status_row(fleet, device)["fault"] == [kind]
        other = "boot" if kind == "health" else "health"
        proc = fleet.labctl("fault", device.name, other, check=False)
        assert proc.returncode == 2, proc.stderr
        assert f"{device.name}: has the fault {kind} already" in proc.stderr and "clear first" in proc.stderr
        fleet.labctl("reboot", device.name)
        assert device.booted_root() == "resin-rootA"
        assert "LABFAULT" not in console_since_last_boot(device), console_since_last_boot(device)
        rc, _out, err = device.run(HEALTHCHECK)
        assert rc == 0, f"the running OS's health check fails under the {kind} fault: {err}"
        assert fleet.labctl("fault", device.name, "clear").stdout.strip() == f"{device.name}: cleared the faults {kind}"
        assert not fault_env.exists()
        assert status_row(fleet, device)["fault"] == []


def test_faults_across_a_power_cut_and_down(lab_factory) -> None:
    """A fault outlives a power cycle; one that needs the device (full, and clearing it) fails
    while it is off, naming the device, and changes nothing; the others are set at once and hit
    from the next boot on. A reflash keeps the boot kinds and drops full. ``down`` removes the
    rules and the device's cgroup."""
    handle = lab_factory(1)
    (device,) = handle.devices()
    state = handle.dir / "state.json"
    addrs = services(handle)
    handle.labctl("fault", device.name, "full")
    handle.labctl("powercut", device.name)
    before = state.read_text()
    proc = handle.labctl("fault", device.name, "clear", check=False)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith(f"labctl: {device.name}: cannot remove {FILLER} (exit 255") and "no fault cleared" in proc.stderr
    assert state.read_text() == before
    handle.labctl("fault", device.name, "registry")  # while the power is off
    assert len(fault_rules(handle)) == len(addrs)
    handle.labctl("poweron", device.name)
    assert all(reach(device, a) == 7 for a in addrs), "the first boot after the power cut reaches the services"
    assert data_free_kib(device) <= FULL_LEAVE_MIB * 1024
    assert status_row(handle, device)["fault"] == ["full", "registry"]
    handle.labctl("fault", device.name, "clear")
    assert all(reach(device, a) == 0 for a in addrs) and not fault_rules(handle)

    handle.labctl("powercut", device.name)
    before = state.read_text()
    proc = handle.labctl("fault", device.name, "full", check=False)
    assert proc.returncode == 1 and proc.stderr.startswith(f"labctl: {device.name}: cannot fill /mnt/data (exit 255)"), proc.stderr
    assert state.read_text() == before
    handle.labctl("poweron", device.name)
    assert device.run(f"test -e {FILLER}")[0] == 1

    # a reflash keeps health (for rootA, which the new disk boots) and drops full (no filler on the new disk)
    handle.labctl("fault", device.name, "health")
    handle.labctl("fault", device.name, "full")
    handle.labctl("reflash", device.name)
    assert status_row(handle, device)["fault"] == ["health"]
    assert (handle.dir / "devices" / device.name / "fault.env").read_text() == "kinds=health\nroot=resin-rootA\n"
    assert device.run(f"test -e {FILLER}")[0] == 1 and data_free_kib(device) > 100 * 1024
    assert device.run(HEALTHCHECK)[0] == 0, "the reflashed root got the health fault"
    handle.labctl("fault", device.name, "clear")

    handle.labctl("fault", device.name, "registry")
    root = cgroup2_root()
    assert root is not None
    cgroup = root / f"osfleet-lab.{device.name}.{device.port}"
    assert cgroup.is_dir() and fault_rules(handle)
    handle.labctl("down")
    assert not fault_rules(handle)
    assert not cgroup.exists()

# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""osfleet.hup.update on real-balenaOS-shaped devices (issue 9), in a mixed fleet.

One lab: two balenaos-profile devices (root partitions hold hostapps, / is an overlay, the
device's own hostapp-update writes the spare root and its hooks copy the boot files and arm the
bootloader, the device's rollback-health commits) and one ab-profile device (the exported root
filesystem, written by the collection). The same playbook run updates all three, picking the
writer per device; every outcome is read from the devices: the booted version and partition, the
hostapp that ``current`` names, the keep-back files' bytes, the commit. Then a second run changes
nothing, the next release comes as a delta, and the health-fault release rolls back through the
device's own rollback machinery.
"""

from __future__ import annotations

import json
import typing as t
from pathlib import Path

import pytest

from osfleet_harness import Lab, PlaybookRun, ansible_playbook

LAB_PREFIX = "ithu"
LAB_DEVICES = 2
LAB_PROFILE = "balenaos"
SOURCE, TARGET, NEXT, HEALTH_FAULT, BOOT_FAULT = "2.88.4", "2.113.0", "2.114.1", "2.115.0", "2.115.1"
KEEP_BACK = ("config.json", "config.txt", "splash/balena-logo.png")

# what an update changes on a balenaos device, read in one round trip
HOSTAPP_STATE = r"""
root=$(awk '$2=="/" {print $3}' /proc/mounts)
act=$(awk '$2=="/mnt/sysroot/active" {d=$1} END {print d}' /proc/mounts)
label=""; for l in resin-rootA resin-rootB; do [ "$(readlink -f /dev/disk/by-partlabel/$l)" = "$(readlink -f "$act")" ] && label=$l; done
c=$(readlink /mnt/sysroot/active/current 2>/dev/null) || c=""
img=$(jq -r .Image "/mnt/sysroot/active/balena/containers/${c##*/}/config.v2.json" 2>/dev/null) || img=""
markers=""; for m in /mnt/state/rollback-*; do [ -e "$m" ] && markers="$markers ${m##*/}"; done
jq -n --arg root_fs "$root" --arg active "$label" --arg image "$img" \
  --arg version "$(sed -n 's/^VERSION="\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' /etc/os-release)" \
  --arg uenv "$(tr '\n' ' ' < /mnt/boot/resinOS_uEnv.txt)" --arg markers "$markers" \
  --arg keep "$(cd /mnt/boot && sha256sum config.json config.txt splash/balena-logo.png)" \
  '$ARGS.named'
"""


@pytest.fixture(scope="module")
def fleet(lab: Lab) -> Lab:
    """The lab's two balenaos devices plus one ab device in the same lab (and inventory)."""
    lab.labctl("up", "--devices", "1", "--profile", "ab", timeout=600)
    mixed = Lab.from_inventory(lab.prefix, lab.inventory)
    assert len(mixed.hosts) == 3
    for host in mixed.hosts:  # a customised boot logo, as users do: the update must keep it
        mixed.sh(host, 'printf "custom boot logo of %s\\n" "$1" > /mnt/boot/splash/balena-logo.png && sync', host)
    return mixed


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hostapp-update")


def profile(lab: Lab, host: str) -> str:
    return str(lab.host_vars[host]["lab_profile"])


def state(lab: Lab, host: str) -> dict[str, t.Any]:
    return t.cast(dict[str, t.Any], json.loads(lab.sh(host, HOSTAPP_STATE)))


def run(lab: Lab, workdir: Path, version: str, limit: str | None = None) -> PlaybookRun:
    return ansible_playbook(lab, workdir=workdir, extra_vars={"hup_target_version": version}, limit=limit)


@pytest.fixture(scope="module")
def before(fleet: Lab) -> dict[str, dict[str, t.Any]]:
    return {h: state(fleet, h) for h in fleet.hosts}


@pytest.fixture(scope="module")
def update_run(fleet: Lab, before: dict[str, dict[str, t.Any]], workdir: Path) -> PlaybookRun:
    return run(fleet, workdir, TARGET)


def rollback_markers(st: dict[str, t.Any]) -> list[str]:
    """The breadcrumbs and triggered markers in /mnt/state (not rollback-health.conf, the device's settings)."""
    return [m for m in st["markers"].split() if m.endswith(("-breadcrumb", "-triggered", "-failed"))]


def hostapp_hosts(lab: Lab) -> list[str]:
    return [h for h in lab.hosts if profile(lab, h) == "balenaos"]


def test_one_run_updates_a_mixed_fleet_picking_the_writer_per_device(fleet: Lab, before: dict[str, t.Any], update_run: PlaybookRun) -> None:
    assert update_run.rc == 0, update_run.summary()
    assert sorted(profile(fleet, h) for h in fleet.hosts) == ["ab", "balenaos", "balenaos"]
    release = fleet.release(TARGET)
    for host in fleet.hosts:
        rootfs = update_run.step(host, "osfleet.hup.rootfs")
        after = state(fleet, host)
        assert after["version"] == TARGET and after["active"] == "resin-rootB", f"{host}: {after}"
        assert after["keep"] == before[host]["keep"], f"{host}: a keep-back file changed"
        assert "upgrade_available=0" in after["uenv"] and not rollback_markers(after), f"{host}: not committed: {after}"
        if profile(fleet, host) == "balenaos":
            assert rootfs.result["writer"] == "hostapp" and rootfs.result["mode"] == "hostapp"
            # booted the new hostapp through `current`; / is its overlay
            assert after["root_fs"] == "overlay" and after["image"] == release["image_id"]
        else:
            assert rootfs.result["writer"] == "export" and rootfs.result["mode"] in ("full", "delta")
            assert after["root_fs"] == "ext4"


def test_a_second_run_changes_nothing(fleet: Lab, update_run: PlaybookRun, workdir: Path) -> None:
    again = run(fleet, workdir, TARGET)
    assert again.rc == 0, again.summary()
    for host in fleet.hosts:
        assert again.stats[host]["changed"] == 0, again.summary()


def test_the_next_release_comes_as_a_delta_pulled_by_hostapp_update(fleet: Lab, update_run: PlaybookRun, workdir: Path) -> None:
    host = hostapp_hosts(fleet)[0]
    result = run(fleet, workdir, NEXT, limit=host)
    assert result.rc == 0, result.summary()
    rootfs = result.step(host, "osfleet.hup.rootfs")
    delta = next(d for d in fleet.release(NEXT)["deltas"] if d["from"] == TARGET)
    assert rootfs.result["source"] == "delta" and rootfs.result["bytes"] == delta["size"]
    after = state(fleet, host)
    assert after["version"] == NEXT and after["active"] == "resin-rootA" and after["image"] == fleet.release(NEXT)["image_id"]


def test_a_health_fault_rolls_back_through_the_devices_own_rollback_health(fleet: Lab, update_run: PlaybookRun, workdir: Path) -> None:
    host = hostapp_hosts(fleet)[1]
    was = state(fleet, host)
    assert was["version"] == TARGET
    result = run(fleet, workdir, HEALTH_FAULT, limit=host)
    assert result.rc != 0
    health = result.step(host, "osfleet.hup.health")
    assert health.result.get("rolled_back") and health.result.get("rollback_reason") == "health", health.result
    after = state(fleet, host)
    assert after["version"] == TARGET and after["active"] == was["active"] and after["image"] == was["image"]
    assert "upgrade_available=0" in after["uenv"]


def test_a_boot_fault_falls_back_through_altboot_on_a_balenaos_device(fleet: Lab, update_run: PlaybookRun, workdir: Path) -> None:
    host = hostapp_hosts(fleet)[0]
    was = state(fleet, host)
    result = run(fleet, workdir, BOOT_FAULT, limit=host)
    assert result.rc != 0
    health = result.step(host, "osfleet.hup.health")
    assert health.result.get("rolled_back") and health.result.get("rollback_reason") == "altboot", health.result
    after = state(fleet, host)
    assert after["version"] == was["version"] and after["active"] == was["active"] and after["image"] == was["image"]
    assert after["keep"] == was["keep"] and "upgrade_available=0" in after["uenv"]


def test_a_saved_image_sent_from_the_controller_updates_a_balenaos_device(fleet: Lab, update_run: PlaybookRun, workdir: Path,
                                                                          tmp_path: Path) -> None:
    """hup_hostapp_transport=push: the controller gets the image with skopeo and sends it; the device
    loads it with hostapp-update -f (air-gapped fleets)."""
    host = hostapp_hosts(fleet)[1]
    was = state(fleet, host)
    assert was["version"] == TARGET
    result = ansible_playbook(fleet, workdir=workdir, limit=host,
                              extra_vars={"hup_target_version": NEXT, "hup_hostapp_transport": "push",
                                          "hup_hostapp_image_cache": str(tmp_path / "images")})
    assert result.rc == 0, result.summary()
    fetch = result.step(host, "osfleet.hup.fetch")
    assert fetch.changed and fetch.result["transport"] == "push" and fetch.result["bytes"] > 0
    after = state(fleet, host)
    assert after["version"] == NEXT and after["active"] != was["active"] and after["image"] == fleet.release(NEXT)["image_id"]
    assert after["keep"] == was["keep"]

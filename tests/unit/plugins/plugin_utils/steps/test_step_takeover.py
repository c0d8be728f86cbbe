# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The takeover's checks and plan (steps/takeover.py): a table of device facts."""

from __future__ import annotations

import dataclasses
import typing as t

import pytest

from ansible_collections.osfleet.hup.plugins.plugin_utils.catalog import Catalog, Release
from ansible_collections.osfleet.hup.plugins.plugin_utils.steps.takeover import (
    LOST, MIB, RAM_RESERVE, HostKeyHome, TakeoverFacts, decide_takeover, facts_from_probe, host_key_home, image_intact,
    staged_already)

SHA = "ab" * 32
IMAGE = 200 * MIB  # the gzip'd disk image
RAW = 1014 * MIB  # unpacked: the l4t-r35 layout
DEVICE = "jx-01"


def target(catalog: Catalog, **disk: t.Any) -> Release:
    image = {"url": "http://127.0.0.1:8080/jetson-xavier-6.1.0.img.gz", "sha256": SHA, "size": IMAGE, "raw_size": RAW}
    image.update(disk)
    return dataclasses.replace(catalog.release("jetson-xavier", "6.1.0"), disk_image={k: v for k, v in image.items() if v is not None})


def facts(**changes: t.Any) -> TakeoverFacts:
    base: dict[str, t.Any] = {
        "disk": "/dev/mmcblk0", "disk_bytes": 1100 * MIB, "mem_available": 2048 * MIB, "staging_free": 1024 * MIB,
        "staging_is_ram": True, "data_clean": True,
        "keep": {"config.json": 512, "system-connections/wifi": 300},
        "boot_connections": {"wifi": "1" * 64}, "etc_connections": {"wifi": "1" * 64},
        "host_key": HostKeyHome("/mnt/state/ssh/ssh_host_ed25519_key", "/ssh/ssh_host_ed25519_key", "ed25519"),
        "host_keys": ("/mnt/state/ssh/ssh_host_ed25519_key",),
    }
    base.update(changes)
    return TakeoverFacts(**base)


def test_a_device_that_can_take_it_gets_the_whole_plan(catalog: Catalog) -> None:
    plan = decide_takeover(DEVICE, "5.1.0", target(catalog), facts())
    assert plan.ok, plan.problems
    assert plan.download_bytes == IMAGE and plan.disk_needed == RAW and plan.ram_needed == IMAGE + 812 + RAM_RESERVE
    assert plan.keep == ["config.json", "system-connections/wifi"] and plan.lost == list(LOST)
    text = " | ".join(plan.actions)
    assert "verified its sha256 " + SHA + " before anything was staged" in text
    assert "wrote the whole disk /dev/mmcblk0 (5.1.0 -> 6.1.0, layout l4t-r35)" in text
    assert plan.as_dict()["url"].endswith("jetson-xavier-6.1.0.img.gz")


def test_an_interrupted_download_is_resumed_and_its_bytes_count_towards_ram(catalog: Catalog) -> None:
    plan = decide_takeover(DEVICE, "5.1.0", target(catalog), facts(staged_bytes=150 * MIB, staging_free=60 * MIB, mem_available=150 * MIB))
    assert plan.ok, plan.problems
    assert plan.download_bytes == 50 * MIB
    assert "resuming after the 150 MiB already staged" in plan.actions[1]


CASES: list[tuple[str, dict[str, t.Any], dict[str, t.Any], str]] = [
    # (name, facts changes, disk image changes, the problem's fragment)
    ("no disk image url", {}, {"url": None}, "the catalog gives no disk image (disk_image url and sha256) for jetson-xavier 6.1.0"),
    ("no sha256", {}, {"sha256": None}, "the catalog gives no disk image"),
    ("no size", {}, {"size": None}, "gives no size for the disk image of 6.1.0"),
    ("no raw size", {}, {"raw_size": None}, "gives no raw_size for the disk image of 6.1.0"),
    ("disk too small", {"disk_bytes": 918 * MIB}, {}, "the disk /dev/mmcblk0 (918 MiB) is smaller than the disk image of 6.1.0 unpacked (1014 MiB"),
    ("not enough RAM", {"mem_available": 200 * MIB}, {}, "not enough RAM for the takeover: it needs 264 MiB"),
    ("staging too small", {"staging_free": 100 * MIB}, {}, "not enough room in RAM to stage the disk image"),
    ("staging on disk", {"staging_is_ram": False}, {}, "the staging directory is not a RAM filesystem"),
    ("data not clean", {"data_clean": False, "data_fsck": "resin-data: 12 errors\nresin-data contains a file system with errors"}, {},
     "the data partition is not clean (fsck -n: resin-data contains a file system with errors)"),
    ("no config.json", {"keep": {"system-connections/wifi": 300}}, {}, "the boot partition has no config.json"),
    ("connection only in /etc", {"etc_connections": {"wifi": "1" * 64, "lte": "2" * 64}}, {},
     "lte only in /etc/NetworkManager/system-connections"),
    ("connection differs", {"etc_connections": {"wifi": "3" * 64}}, {},
     "wifi differs between /etc/NetworkManager/system-connections and the boot partition"),
    ("host key not on the state partition", {"host_key": None, "host_keys": ("/etc/ssh/ssh_host_ed25519_key",)}, {},
     "the SSH host keys of its sshd (/etc/ssh/ssh_host_ed25519_key) are not on the state partition (resin-state)"),
    ("no host key found", {"host_key": None, "host_keys": ()}, {}, "none found (no sshd -T, no HostKey line"),
    ("no telinit nor partx", {"missing_tools": ("telinit", "partx")}, {},
     "the device lacks programs the whole-disk write needs (telinit: moves PID 1 off the disk into RAM; partx: reads the new"),
]


@pytest.mark.parametrize("name,fact_changes,disk_changes,fragment", CASES, ids=[c[0] for c in CASES])
def test_refusals_name_the_device_and_the_reason(catalog: Catalog, name: str, fact_changes: dict[str, t.Any],
                                                 disk_changes: dict[str, t.Any], fragment: str) -> None:
    plan = decide_takeover(DEVICE, "5.1.0", target(catalog, **disk_changes), facts(**fact_changes))
    assert not plan.ok, name
    assert any(p.startswith(f"{DEVICE}: ") and fragment in p for p in plan.problems), plan.problems


def test_a_data_partition_not_checked_is_no_refusal_but_is_said(catalog: Catalog) -> None:
    plan = decide_takeover(DEVICE, "5.1.0", target(catalog), facts(data_clean=None))
    assert plan.ok and "data partition not checked (no fsck)" in plan.actions[0]


def test_a_connection_only_on_the_boot_partition_is_fine(catalog: Catalog) -> None:
    plan = decide_takeover(DEVICE, "5.1.0", target(catalog), facts(boot_connections={"wifi": "1" * 64, "eth": "4" * 64}))
    assert plan.ok, plan.problems


def test_an_image_staged_already_needs_no_download_and_no_more_room(catalog: Catalog) -> None:
    # the staging tmpfs is full of the verified image: only the kept files must fit beside it
    plan = decide_takeover(DEVICE, "5.1.0", target(catalog), facts(staged_image=SHA, reclaimable=IMAGE, staging_free=16 * MIB,
                                                                   mem_available=100 * MIB))
    assert plan.ok, plan.problems
    assert plan.download_bytes == 0


def test_an_image_of_another_release_is_freed_for_the_new_one(catalog: Catalog) -> None:
    plan = decide_takeover(DEVICE, "5.1.0", target(catalog), facts(staged_image="cd" * 32, reclaimable=IMAGE, staging_free=16 * MIB))
    assert plan.ok, plan.problems
    assert plan.download_bytes == IMAGE


def staged_probe(**changes: t.Any) -> dict[str, t.Any]:
    """scripts/takeover_probe.sh's JSON of a device whose staging holds the image SHA and config.json."""
    keep = {"config.json": {"size": 512, "sha256": "2" * 64}}
    raw: dict[str, t.Any] = {
        "disk": "/dev/mmcblk0", "disk_bytes": 1100 * MIB, "mem_available": 2048 * MIB, "staging_fstype": "tmpfs",
        "staging_free": 16 * MIB, "staged_bytes": 0, "image_bytes": IMAGE, "image_sha256": "", "fsck_rc": 0, "keep": keep,
        "record": {"url": "http://127.0.0.1:8080/jetson-xavier-6.1.0.img.gz", "sha256": SHA, "size": IMAGE,
                   "keep": [{"path": "config.json", "size": 512, "sha256": "2" * 64}]},
        "host_keys": [{"path": "/mnt/state/ssh/ssh_host_ed25519_key", "resolved": "/mnt/state/ssh/ssh_host_ed25519_key"}],
        "mounts": [{"dev": "179:4", "root": "/", "point": "/mnt/state"}], "state_dev": "179:4",
    }
    raw.update(changes)
    return raw


@pytest.mark.parametrize(("image_sha256", "intact"), [("", True), (SHA, True), ("cd" * 32, False)])
def test_a_staged_image_is_reused_only_while_it_has_its_sha256(catalog: Catalog, image_sha256: str, intact: bool) -> None:
    """A staged image read again (the probe's ``verify=1``) whose sha256 is no longer its record's was
    damaged in RAM: not staged, downloaded whole again (not counted as staged); not read again: the record holds."""
    raw = staged_probe(image_sha256=image_sha256)
    assert image_intact(raw) is intact
    plan = decide_takeover(DEVICE, "5.1.0", target(catalog), facts_from_probe(raw))
    assert plan.ok, plan.problems
    assert staged_already(raw, plan) is intact
    assert plan.download_bytes == (0 if intact else IMAGE)


def test_a_staged_image_without_a_record_is_not_intact() -> None:
    assert not image_intact(staged_probe(record=None, image_sha256=SHA))


# --- where the next SSH host key goes (host_key_home) ---------------------------------------------
STATE = "179:4"
#: the mounts of a lab device: the state partition mounted at /mnt/state
LAB_MOUNTS = [{"dev": "7:0", "root": "/", "point": "/"}, {"dev": "179:1", "root": "/", "point": "/mnt/boot"},
              {"dev": STATE, "root": "/", "point": "/mnt/state"}, {"dev": "179:6", "root": "/", "point": "/mnt/data"}]
#: a balenaOS device: /etc/ssh/hostkeys is a bind mount of the state partition's root-overlay
BALENA_MOUNTS = [*LAB_MOUNTS, {"dev": "0:30", "root": "/", "point": "/etc"},
                 {"dev": STATE, "root": "/root-overlay/etc/ssh/hostkeys", "point": "/etc/ssh/hostkeys"}]


def keys(*paths: str) -> list[dict[str, str]]:
    return [{"path": p, "resolved": p} for p in paths]


def test_a_key_on_the_state_partition_is_found_inside_its_filesystem() -> None:
    home = host_key_home(keys("/mnt/state/ssh/ssh_host_ed25519_key"), LAB_MOUNTS, STATE)
    assert home == HostKeyHome("/mnt/state/ssh/ssh_host_ed25519_key", "/ssh/ssh_host_ed25519_key", "ed25519")


def test_a_bind_mount_of_the_state_partition_resolves_to_its_root_overlay() -> None:
    found = keys("/etc/ssh/hostkeys/ssh_host_rsa_key", "/etc/ssh/hostkeys/ssh_host_ed25519_key")
    home = host_key_home(found, BALENA_MOUNTS, STATE)
    assert home == HostKeyHome("/etc/ssh/hostkeys/ssh_host_ed25519_key", "/root-overlay/etc/ssh/hostkeys/ssh_host_ed25519_key", "ed25519")


def test_without_ed25519_the_first_type_the_sshd_reads_in_order_is_made() -> None:
    home = host_key_home(keys("/etc/ssh/hostkeys/ssh_host_rsa_key", "/etc/ssh/hostkeys/ssh_host_ecdsa_key"), BALENA_MOUNTS, STATE)
    assert home is not None and (home.type, home.inner) == ("ecdsa", "/root-overlay/etc/ssh/hostkeys/ssh_host_ecdsa_key")


@pytest.mark.parametrize("found,mounts,state", [
    (keys("/etc/ssh/ssh_host_ed25519_key"), BALENA_MOUNTS, STATE),  # on the overlay /etc: lost with the disk
    (keys("/mnt/state/ssh/ssh_host_ed25519_key"), LAB_MOUNTS, ""),  # no resin-state partition found
    (keys("/mnt/state/ssh/ssh_host_ed25519_key"), [*LAB_MOUNTS, {"dev": "0:40", "root": "/", "point": "/mnt/state/ssh"}], STATE),
    (keys("/mnt/state/ssh/authorized_keys"), LAB_MOUNTS, STATE),  # not a host key file name
    (keys("/mnt/state/ssh/ssh_host_dsa_key"), LAB_MOUNTS, STATE),  # a type ssh-keygen is not asked for
    ([], LAB_MOUNTS, STATE),
], ids=["on /etc", "no state partition", "a tmpfs over the state mount", "not a host key", "dsa", "no keys"])
def test_a_key_not_on_the_state_partition_gives_none(found: list[dict[str, str]], mounts: list[dict[str, str]], state: str) -> None:
    assert host_key_home(found, mounts, state) is None


def test_the_resolved_path_counts_and_mountinfo_escapes_are_read() -> None:
    # /etc/ssh/ssh_host_ed25519_key -> a symlink onto a state mount whose mount point has a space (\\040)
    found = [{"path": "/etc/ssh/ssh_host_ed25519_key", "resolved": "/mnt/my state/k/ssh_host_ed25519_key"}]
    mounts = [*LAB_MOUNTS, {"dev": STATE, "root": "/", "point": "/mnt/my\\040state"}]
    assert host_key_home(found, mounts, STATE) == HostKeyHome("/etc/ssh/ssh_host_ed25519_key", "/k/ssh_host_ed25519_key", "ed25519")
    found = [{"path": "/etc/ssh/ssh_host_ed25519_key", "resolved": "/mnt/state/k/../ssh/ssh_host_ed25519_key"}]
    assert host_key_home(found, LAB_MOUNTS, STATE) == HostKeyHome("/etc/ssh/ssh_host_ed25519_key", "/ssh/ssh_host_ed25519_key", "ed25519")


def test_a_path_inside_the_state_partition_that_is_not_plain_is_refused() -> None:
    # a bind mount of a state directory whose name has a space: no path the device shell gets unquoted-safe
    mounts = [*LAB_MOUNTS, {"dev": STATE, "root": "/host\\040keys", "point": "/etc/ssh/hostkeys"}]
    assert host_key_home(keys("/etc/ssh/hostkeys/ssh_host_ed25519_key"), mounts, STATE) is None


def test_the_probe_gives_the_facts_their_host_key() -> None:
    raw = {"host_keys": keys("/etc/ssh/hostkeys/ssh_host_ed25519_key"), "mounts": BALENA_MOUNTS, "state_dev": STATE}
    got = facts_from_probe(raw)
    assert got.host_key is not None and got.host_key.inner == "/root-overlay/etc/ssh/hostkeys/ssh_host_ed25519_key"
    assert got.host_keys == ("/etc/ssh/hostkeys/ssh_host_ed25519_key",)
    assert facts_from_probe({}).host_key is None


def test_the_plan_names_where_the_next_host_key_goes(catalog: Catalog) -> None:
    plan = decide_takeover(DEVICE, "5.1.0", target(catalog), facts())
    assert "put the device's next SSH host key (ed25519) on the new state partition where its sshd reads it " \
           "(/mnt/state/ssh/ssh_host_ed25519_key)" in plan.actions
    assert plan.as_dict()["host_key"] == {"path": "/mnt/state/ssh/ssh_host_ed25519_key", "type": "ed25519"}

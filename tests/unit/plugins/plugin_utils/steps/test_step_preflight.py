# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The preflight's decision (steps/preflight.py): a table of device states."""

from __future__ import annotations

import json

import copy
import dataclasses
import typing as t

import pytest
from documented import documented
from prepare_model import (
    BOB,
    CATALOG,
    D88,
    D113,
    D114,
    DELTA113,
    DOWN_REGISTRIES,
    JX,
    ME,
    MIB,
    OK_REGISTRIES,
    OLD,
    lock_of,
    make_state,
    preflight,
    stamp,
)

from ansible_collections.osfleet.hup.plugins.plugin_utils.catalog import Catalog
from ansible_collections.osfleet.hup.plugins.plugin_utils.device import parse_state
from ansible_collections.osfleet.hup.plugins.plugin_utils.steps.device_info import device_facts
from ansible_collections.osfleet.hup.plugins.plugin_utils.method import choose_method
from ansible_collections.osfleet.hup.plugins.plugin_utils.release import release_dict
from ansible_collections.osfleet.hup.plugins.plugin_utils.steps.preflight import (
    PreflightArgs,
    registry_check_missing,
    registry_check_skipped,
    registry_skip_versions,
)


PREFLIGHT_CASES: list[tuple[str, dict[str, t.Any], dict[str, t.Any], str | None, str | None, list[str]]] = [
    # (name, state kwargs, preflight kwargs, phase, method, problem fragments; [] = no problem)
    ("update needed", {}, {}, "needed", "balenahup", []),
    ("target with +rev", {"version": "2.113.0"}, {"target": "2.114.1+rev1"}, "needed", "balenahup", []),
    ("already on target", {"version": "2.113.0", "running_sup": "14.11.2"}, {}, "current", "balenahup", []),
    ("on target: nothing else matters", {"version": "2.113.0", "running_sup": "14.11.2", "lock": lock_of(BOB), "free_kib": {"data": 1, "state": 1}},
     {"registries": DOWN_REGISTRIES}, "current", "balenahup", []),
    ("on target, a newer supervisor runs", {"version": "2.113.0", "running_sup": "15.0.0"}, {}, "current", "balenahup", []),
    ("on target, the release names no supervisor", {"version": "2.120.0.dev"}, {"target": "2.120.0.dev"}, "current", "balenahup", []),
    # issue 9: a balenaOS device that lost power after hostapp-update's hooks armed the new OS, before
    # the supervisor step, boots the target (and commits it) with the old supervisor
    ("on target, the old supervisor runs", {"version": "2.113.0", "active": "resin-rootB", "inactive_stamp": stamp("2.88.4", D88)},
     {}, "supervisor_behind", "balenahup", []),
    ("on target, the old supervisor: the lock counts", {"version": "2.113.0", "lock": lock_of(BOB)}, {}, "supervisor_behind", "balenahup",
     ["update already in progress: lock held by bob@laptop"]),
    ("on target, the old supervisor: this run's lock", {"version": "2.113.0", "lock": lock_of(ME)}, {"lock_run_id": "r1"},
     "supervisor_behind", "balenahup", []),
    ("on target, the old supervisor: a registry must answer", {"version": "2.113.0"}, {"registries": DOWN_REGISTRIES},
     "supervisor_behind", "balenahup", ["no registry answers from the device"]),
    ("on target, the old supervisor: no space check", {"version": "2.113.0", "free_kib": {"data": 10}}, {}, "supervisor_behind", "balenahup", []),
    ("booted target, not committed", {"version": "2.113.0", "upgrade": 1}, {}, "pending_commit", "balenahup", []),
    ("booted target, breadcrumb left", {"version": "2.113.0", "markers": ("rollback-health-breadcrumb",)}, {}, "pending_commit", "balenahup", []),
    ("staged", {"inactive_stamp": stamp("2.113.0", D113, source="delta")}, {}, "staged", "balenahup", []),
    ("staged and armed", {"inactive_stamp": stamp("2.113.0", D113), "root_part": 3, "upgrade": 1}, {}, "staged", "balenahup", []),
    ("staged: space not checked", {"inactive_stamp": stamp("2.113.0", D113), "free_kib": {"data": 10}}, {}, "staged", "balenahup", []),
    ("unknown target", {}, {"target": "9.9.9"}, None, None,
     ["unknown target version 9.9.9 for genericx86-64-ext; known: 2.12.0, 2.88.4, 2.113.0, 2.114.1+rev1, 2.120.0.dev"]),
    ("older target", {"version": "2.113.0"}, {"target": "2.88.4"}, "needed", "balenahup",
     ["target 2.88.4 is older than the running 2.113.0 (downgrades are not allowed)"]),
    ("older target allowed", {"version": "2.113.0"}, {"target": "2.88.4", "allow_downgrade": True}, "needed", "balenahup", []),
    ("prod to dev", {}, {"target": "2.120.0.dev"}, "needed", "balenahup", ["cannot switch between development and production"]),
    ("unsupported source", {"version": "2.12.0"}, {}, "needed", "balenahup", ["the running 2.12.0 is older than 2.14.0"]),
    ("wrong device type", {}, {"target": "6.1.0", "device_type": JX}, "needed", "takeover",
     ["the device is a genericx86-64-ext, the release is for jetson-xavier", "needs the advanced update (takeover)"]),
    ("device type unknown to the catalog", {"slug": "raspberrypi4-64"}, {}, None, None,
     ["unknown device type raspberrypi4-64 in catalog test-catalog.json; known: genericx86-64-ext, jetson-xavier"]),
    ("takeover needed", {"version": "5.1.0", "slug": JX, "arch": "aarch64"}, {"target": "6.1.0"}, "needed", "takeover",
     ["needs the advanced update (takeover), which wipes the data partition (the partition layout changes from l4t-r32 to l4t-r35)"]),
    ("takeover allowed", {"version": "5.1.0", "slug": JX, "arch": "aarch64"}, {"target": "6.1.0", "allow_takeover": True},
     "needed", "takeover", []),
    ("both registries down", {}, {"registries": DOWN_REGISTRIES}, "needed", "balenahup",
     ["no registry answers from the device: primary 127.0.0.1:5000: curl: (7) Failed to connect to 127.0.0.1 port 5000; "
      "fallback 127.0.0.1:5001: curl: (7) Failed to connect to 127.0.0.1 port 5001"]),
    ("primary down, fallback up", {}, {"registries": (DOWN_REGISTRIES[0], OK_REGISTRIES[1])}, "needed", "balenahup", []),
    ("registry down, check disabled", {}, {"registries": DOWN_REGISTRIES, "check_registry": False}, "needed", "balenahup", []),
    ("registry down, staged", {"inactive_stamp": stamp("2.113.0", D113)}, {"registries": DOWN_REGISTRIES}, "staged", "balenahup",
     ["no registry answers"]),
    ("inactive root too small", {"size_kib": {"inactive": 20000}}, {}, "needed", "balenahup",
     ["the inactive root resin-rootB is too small: 19 MiB, 2.113.0 needs 24 MiB unpacked (pull size × 1.2; the catalog has no size_unpacked)"]),
    ("data partition full", {"free_kib": {"data": 50 * 1024}}, {}, "needed", "balenahup",
     ["not enough free space on /mnt/data: 50 MiB free, 84 MiB needed (release 20 MiB + 64 MiB margin)"]),
    ("data margin option", {"free_kib": {"data": 50 * 1024}}, {"min_free_data_mib": 10}, "needed", "balenahup", []),
    ("state partition full", {"free_kib": {"state": 63}}, {}, "needed", "balenahup",
     ["not enough free space on /mnt/state: 63 KiB free, 64 KiB needed"]),
    ("state margin option", {"free_kib": {"state": 1000}}, {"min_free_state_mib": 2}, "needed", "balenahup",
     ["not enough free space on /mnt/state: 1000 KiB free, 2048 KiB needed"]),
    ("lock held by another owner", {"lock": lock_of(BOB)}, {}, "needed", "balenahup",
     ["update already in progress: lock held by bob@laptop (run r1) since 2027-01-15T07:50:00Z"]),
    ("lock held by this owner", {"lock": lock_of(ME)}, {}, "needed", "balenahup", []),
    ("lock held by this run", {"lock": lock_of(ME)}, {"lock_run_id": "r1"}, "needed", "balenahup", []),
    ("lock held by another run of this owner", {"lock": lock_of(ME, uptime=4990.0, boot_id="b1")}, {"lock_run_id": "r2"}, "needed", "balenahup",
     ["update already in progress: lock held by ops@controller (run r1) since 2027-01-15T07:50:00Z, last refreshed 10 s ago; "
      "to resume that run, run again as ops@controller with hup_run_id=r1"]),
    ("interrupted lock of another run of this owner", {"lock": lock_of(ME, interrupted={"reason": "gone"})}, {"lock_run_id": "r2"}, "needed", "balenahup", []),
    ("stale lock of another owner", {"lock": lock_of(BOB, since=OLD)}, {}, "needed", "balenahup", []),
    ("stale lock, longer limit", {"lock": lock_of(BOB, since=OLD)}, {"lock_stale_after": 86400}, "needed", "balenahup",
     ["lock held by bob@laptop"]),
    ("unreadable lock", {"lock": "{garbage"}, {}, "needed", "balenahup", ["the update lock /mnt/state/osfleet/hup.lock is unreadable"]),
    ("reference updater runs", {"legacy_lock": True}, {}, "needed", "balenahup",
     ["update already in progress: /var/lock/resinhup.lock is held"]),
    ("booted another update, not committed", {"upgrade": 1}, {}, "needed", "balenahup",
     ["an update to 2.88.4 is waiting for its commit (resin-rootA booted with upgrade_available=1)"]),
    ("rollback-health still testing", {"health_state": "testing"}, {}, "needed", "balenahup",
     ["rollback-health is checking the update to 2.88.4 (testing)"]),
    ("armed env naming the inactive root is fine", {"root_part": 3, "upgrade": 1, "inactive_stamp": stamp("2.114.1+rev1", D114)},
     {}, "needed", "balenahup", []),
    ("breadcrumbs alone are fine", {"markers": ("rollback-health-breadcrumb", "rollback-altboot-breadcrumb")}, {}, "needed", "balenahup", []),
    ("rolled back earlier is fine", {"markers": ("rollback-health-triggered", "rollback-health-failed")}, {}, "needed", "balenahup", []),
    ("bad bootloader env", {"uenv": "resin_root_part=zz\nupgrade_available=0\n"}, {}, None, None, ["cannot read the bootloader env"]),
    ("every problem at once", {"version": "2.113.0", "lock": lock_of(BOB), "free_kib": {"data": 1024, "state": 10}},
     {"target": "2.88.4", "registries": DOWN_REGISTRIES}, "needed", "balenahup",
     ["older than the running", "lock held by bob@laptop", "/mnt/data", "/mnt/state", "no registry answers"]),
]


@pytest.mark.parametrize(("state_kw", "pf_kw", "phase", "method", "problems"),
                         [c[1:] for c in PREFLIGHT_CASES], ids=[c[0] for c in PREFLIGHT_CASES])
def test_preflight(catalog: Catalog, state_kw: dict[str, t.Any], pf_kw: dict[str, t.Any], phase: str | None,
                   method: str | None, problems: list[str]) -> None:
    plan = preflight(catalog, make_state(**state_kw), **pf_kw)
    assert plan.phase == phase
    assert plan.method == method
    for fragment in problems:
        assert any(fragment in p for p in plan.problems), (fragment, plan.problems)
    if not problems:
        assert plan.problems == []
    assert len(plan.problems) == len(set(plan.problems))


def _with_size_unpacked(size: int) -> Catalog:
    data = copy.deepcopy(CATALOG)
    next(r for r in data["releases"] if r["version"] == "2.113.0")["size_unpacked"] = size
    return Catalog(data, "test-catalog.json")


def test_preflight_root_check_uses_the_unpacked_size() -> None:
    """Issue 7 item 9: the pull size (20 MiB, × 1.2 = 24 MiB) fits a 39 MiB root, but the image
    unpacks to 50 MiB (55 MiB with headroom): refused before anything is written."""
    state = make_state(size_kib={"inactive": 40000})
    plan = preflight(_with_size_unpacked(50 * MIB), state)
    assert plan.problems == ["the inactive root resin-rootB is too small: 39 MiB, 2.113.0 needs 55 MiB unpacked (size_unpacked 50 MiB × 1.1)"]
    assert plan.release is not None and release_dict(plan.release)["size_unpacked"] == 50 * MIB
    assert preflight(_with_size_unpacked(30 * MIB), state).problems == []


def test_preflight_release_size_unknown_skips_size_checks(catalog: Catalog) -> None:
    state = make_state(version="2.113.0", size_kib={"inactive": 10}, free_kib={"data": 10})
    plan = preflight(catalog, state, target="2.114.1+rev1")  # no size in the catalog
    assert plan.problems == []


def test_preflight_says_why_the_supervisor_is_behind(catalog: Catalog) -> None:
    """Issue 9: the phase's note names the running supervisor and the release's (the supervisor step's rule)."""
    plan = preflight(catalog, make_state(version="2.113.0", active="resin-rootB", inactive_stamp=stamp("2.88.4", D88)))
    assert plan.phase == "supervisor_behind" and plan.method == "balenahup" and plan.problems == []
    assert plan.notes == ["already on 2.113.0 (committed), but the supervisor runs 14.0.8, the release ships 14.11.2"]
    assert preflight(catalog, make_state(version="2.113.0", running_sup="14.11.2")).notes == ["already on 2.113.0 (committed)"]


def test_preflight_release_and_notes(catalog: Catalog) -> None:
    plan = preflight(catalog, make_state())
    assert plan.release is not None and plan.release.digest == D113
    assert plan.notes == ["2.88.4 → 2.113.0"]
    assert release_dict(plan.release)["deltas"] == [
        {"from": "2.88.4", "repository": "osfleet/gx-delta", "tag": "2.88.4-2.113.0", "digest": DELTA113, "size": MIB}
    ]


def test_takeover_reasons(catalog: Catalog) -> None:
    release = catalog.release(JX, "6.1.0")
    assert choose_method(JX, "5.1.0", release.version, min_takeover_version="6.0.50", current_arch="aarch64",
                         target_arch=release.arch).reason == "jetson-xavier changes its partition layout at 6.0.50, between 5.1.0 and 6.1.0"
    assert choose_method(JX, "5.1.0", release.version, current_arch="armv7hf",
                         target_arch=release.arch).reason == "the architecture changes from armv7hf to aarch64"


@pytest.mark.parametrize(
    ("state_kw", "pf_kw", "rule", "problem"),
    [
        ({}, {}, "standard", None),
        ({"version": "5.1.0", "slug": JX, "arch": "aarch64"}, {"target": "6.1.0"}, "partition-layout",
         "needs the advanced update (takeover), which wipes the data partition (the partition layout changes from l4t-r32 to "
         "l4t-r35) [rule: partition-layout]; set allow_takeover (the role's hup_allow_data_loss: true, per device or group) to allow it"),
        ({"version": "2.113.0"}, {"target": "2.88.4"}, "downgrade",
         "target 2.88.4 is older than the running 2.113.0 (downgrades are not allowed) [rule: downgrade]; "
         "set allow_downgrade (the role's hup_allow_downgrade) to allow it"),
        ({}, {"target": "2.120.0.dev"}, "dev-prod-switch",
         "cannot switch between development and production: running 2.88.4, target 2.120.0.dev [rule: dev-prod-switch]"),
        ({"version": "2.12.0"}, {}, "min-source-version",
         "the running 2.12.0 is older than 2.14.0+rev1, the oldest version this update supports [rule: min-source-version]"),
        ({"version": "2.113.0"}, {}, None, None),  # on the target: nothing to decide
    ],
)
def test_preflight_method_rule(catalog: Catalog, state_kw: dict[str, t.Any], pf_kw: dict[str, t.Any], rule: str | None,
                               problem: str | None) -> None:
    state = make_state(**state_kw)
    plan = preflight(catalog, state, **pf_kw)
    result = plan.result((), state)
    assert result["method_rule"] == rule
    assert (result["method_reason"] is None) == (rule is None)
    assert plan.problems == ([problem] if problem else [])


# --- a release that rolled back on the device (issue 7, item 15) ---------------------------------

def rolled_back_state(*, markers: tuple[str, ...] = (), newer: str = "", record: dict[str, t.Any] | None = None,
                      inactive: str = "2.113.0") -> t.Any:
    """2.88.4 running after 2.113.0 (on the inactive root) fell back."""
    state = make_state(markers=markers, inactive_stamp=stamp(inactive, D113 if inactive == "2.113.0" else D114))
    raw = {**state.raw, "triggered_newer": newer, "rollback_record": json.dumps(record) if record else ""}
    return parse_state(raw)


@pytest.mark.parametrize("markers, newer, record, reason", [
    (("rollback-altboot-triggered",), "rollback-altboot-triggered", None, "the new OS did not boot: /mnt/state/rollback-altboot-triggered"),
    (("rollback-health-triggered",), " rollback-health-triggered", None,
     "the device's health checks failed: /mnt/state/rollback-health-triggered"),
    ((), "", {"reason": "checks", "from_version": "2.113.0", "to_version": "2.88.4"}, "the health commands failed: /mnt/state/osfleet-rollback"),
])
def test_a_release_that_rolled_back_is_refused_until_retried(catalog: Catalog, markers, newer, record, reason) -> None:
    state = rolled_back_state(markers=markers, newer=newer, record=record)
    plan = preflight(catalog, state)
    assert plan.problems == [
        f"2.113.0 rolled back on this device ({reason}); it is not tried again unless retry_rolled_back is set (the role's hup_retry_rolled_back)"
    ]
    assert device_facts(state)["rolled_back"][0]["version"] == "2.113.0"
    retried = preflight(catalog, state, retry_rolled_back=True)
    assert retried.problems == [] and retried.phase == "staged"
    assert any("trying 2.113.0 again although it rolled back" in note for note in retried.notes)
    # another release is not refused
    assert preflight(catalog, state, target="2.114.1+rev1").problems == []


@pytest.mark.parametrize("markers, newer, record", [
    # the marker is older than the inactive root's stamp: a root written after the rollback holds 2.114.1
    (("rollback-altboot-triggered",), "", None),
    # a rollback requested before the reboot: the device still runs the version it "left"
    ((), "", {"reason": "requested", "from_version": "2.88.4", "to_version": "2.88.4"}),
])
def test_markers_that_name_no_rolled_back_release(catalog: Catalog, markers, newer, record) -> None:
    state = rolled_back_state(markers=markers, newer=newer, record=record)
    assert device_facts(state)["rolled_back"] == []
    assert preflight(catalog, state).problems == []


@pytest.mark.parametrize("upgrade", [0, 1])
def test_preflight_says_that_rootfs_points_the_env_at_the_running_root(catalog: Catalog, upgrade: int) -> None:
    """Issue 7 item 1: the env names the inactive root (a rollback waiting for its reboot, or a killed run)."""
    plan = preflight(catalog, make_state(root_part=3, upgrade=upgrade))
    assert plan.phase == "needed" and plan.problems == []
    assert (f"the bootloader env names resin-rootB, the root to write, as the root to boot (upgrade_available={upgrade}); "
            "osfleet.hup.rootfs points it at the running root resin-rootA before it writes") in plan.notes
    assert not [n for n in preflight(catalog, make_state()).notes if "bootloader env names" in n]


def _pargs(target: str = "2.113.0", **kw: t.Any) -> PreflightArgs:
    args = documented("preflight", catalog="test-catalog.json", target_version=target, lock_owner=ME)
    return dataclasses.replace(PreflightArgs.from_args(args, args["min_free_mib"]), **kw)


def test_the_probe_spares_a_device_on_the_target_the_registry_check(catalog: Catalog) -> None:
    """The probe skips the registry check where /etc/os-release names the target (as the operator or
    the catalog spell it): a device already on it needs no registry. With the check off, no skip list."""
    assert registry_skip_versions(_pargs(), catalog) == "2.113.0"
    assert registry_skip_versions(_pargs("v2.113.0"), catalog) == "v2.113.0 2.113.0"
    assert registry_skip_versions(_pargs(check_registry=False), catalog) == ""
    assert registry_skip_versions(_pargs("2.113.0 $(reboot)"), catalog) == ""  # no plain version: checked everywhere
    assert registry_check_skipped({"skipped": True}) and not registry_check_skipped({}) and not registry_check_skipped({"skipped": "true"})


@pytest.mark.parametrize(("state_kw", "skipped", "missing"), [
    ({"version": "2.113.0", "running_sup": "14.11.2"}, True, False),  # current: no registry needed
    ({"version": "2.113.0", "upgrade": 1}, True, False),  # pending_commit: nothing to pull
    ({"version": "2.113.0"}, True, True),  # supervisor_behind: its supervisor comes from a registry
    ({"version": "2.113.0"}, False, False),  # checked already in the probe
    ({}, False, False),  # needed: the probe checked (the device's version is not the target's)
])
def test_a_skipped_registry_check_is_made_up_for_where_the_update_pulls(
        catalog: Catalog, state_kw: dict[str, t.Any], skipped: bool, missing: bool) -> None:
    """The version only hints at the phase: the decision comes after the probe, and a device that runs
    the target's version but whose update pulls (supervisor_behind) gets the check in a second round trip."""
    state = make_state(**state_kw)
    plan = preflight(catalog, state, registries=())
    assert registry_check_missing(_pargs(), plan, skipped) is missing
    assert registry_check_missing(_pargs(check_registry=False), plan, skipped) is False
    if missing:  # and with the check made up for, a registry that does not answer still stops it
        assert any("no registry answers" in p for p in preflight(catalog, state, registries=DOWN_REGISTRIES).problems)

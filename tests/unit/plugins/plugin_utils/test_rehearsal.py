# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""plugin_utils.rehearsal: the drills (which device runs which, how each is judged) and the evidence record."""

from __future__ import annotations

import pytest
from rehearsal_records import DIGEST, PAIR, record

from ansible_collections.osfleet.hup.plugins.plugin_utils import rehearsal as rh

LAB_COMMANDS = {c: f"labctl {c} dev1" for c in rh.COMMANDS}


def test_the_drills_are_spread_over_the_bench_devices_of_each_type() -> None:
    x86 = {"device_type": "genericx86-64-ext", "commands": LAB_COMMANDS}
    plan = rh.assign_drills({"b2": x86, "b1": x86, "b3": x86, "pi": {"device_type": "raspberrypi4-64", "commands": LAB_COMMANDS}},
                            ["update", "health", "power_write", "link_cut"])
    # the drills that end on the target one per device (none starts with a reflash), health first on b1 (it ends on the first version)
    assert plan["hosts"] == {"b1": ["health", "update"], "b2": ["power_write"], "b3": ["link_cut"],
                             "pi": ["health", "update", "power_write", "link_cut"]}
    assert plan["types"] == {"genericx86-64-ext": ["b1", "b2", "b3"], "raspberrypi4-64": ["pi"]}
    assert plan["drills"] == ["update", "health", "power_write", "link_cut"]


def test_a_drill_goes_to_a_device_that_has_its_commands_else_it_is_reported_not_run_there() -> None:
    plain = {"device_type": "t", "commands": {}}
    plug = {"device_type": "t", "commands": {"power_cut": "plug off", "power_on": "plug on"}}
    plan = rh.assign_drills({"a": plain, "b": plug}, ["update", "health", "power_write", "power_bootfiles"])
    assert plan["hosts"] == {"a": ["health", "update"], "b": ["power_write", "power_bootfiles"]}
    # no device has the commands: the drill still goes somewhere (and is not run there, saying why)
    assert rh.assign_drills({"a": plain}, ["update", "power_write"])["hosts"] == {"a": ["update", "power_write"]}
    with pytest.raises(rh.RehearsalError, match="bench device a: its device type is not known"):
        rh.assign_drills({"a": {"commands": {}}}, "all")


def test_a_device_whose_commands_cannot_be_templated_keeps_its_share_by_their_names() -> None:
    """The role gives the names of the commands alone when their values cannot be templated (an
    undefined variable): each named command counts as given, so the device keeps the share it has
    with them (its drills then fail with the templating error, in the evidence)."""
    full = {"device_type": "t", "commands": {"health_fault": "x", "fault_clear": "y", "power_cut": "p", "power_on": "q"}}
    names = {"device_type": "t", "commands": ["health_fault", "fault_clear", "power_cut", "power_on"], "commands_error": "'plug' is undefined"}
    drills = ["update", "health", "power_write", "power_bootfiles"]
    assert rh.assign_drills({"a": full, "b": names}, drills)["hosts"] == rh.assign_drills({"a": full, "b": full}, drills)["hosts"]
    assert rh.missing_commands("health", ["health_fault", "fault_clear"]) is None
    assert rh.missing_commands("power_write", ["power_cut"]) == "needs the device's power_on command (hup_rehearsal_commands), which it has not"


def test_every_drill_on_four_devices_needs_one_reflash() -> None:
    """The five drills that end on the target over four devices: one device runs two of them (its
    second starts with a reflash); the three that end on the first version go first on the others."""
    x86 = {"device_type": "genericx86-64-ext", "commands": LAB_COMMANDS}
    plan = rh.assign_drills({f"b{i}": x86 for i in (1, 2, 3, 4)}, "all")
    assert plan["hosts"] == {"b1": ["update", "link_cut"], "b2": ["health", "power_write"], "b3": ["boot", "power_bootfiles"],
                             "b4": ["advanced_staged", "controller_killed"]}
    reflashes = sum(max(0, len([d for d in mine if d not in rh.ENDS_ON_FIRST]) - 1) for mine in plan["hosts"].values())
    assert reflashes == 1
    for mine in plan["hosts"].values():  # nothing that ends on the first version after one that ends on the target
        ends = [d in rh.ENDS_ON_FIRST for d in mine]
        assert ends == sorted(ends, reverse=True), mine


def test_drills_run_in_their_order_and_unknown_ones_are_named() -> None:
    assert rh.parse_drills(["link_cut", "update"]) == ["update", "link_cut"]
    assert rh.parse_drills("all") == list(rh.DRILLS) and rh.parse_drills("cheap") == ["update", "health"]
    with pytest.raises(rh.RehearsalError, match="unknown drill.*power"):
        rh.parse_drills(["update", "power"])


def test_a_drill_without_its_command_is_not_run_never_passed() -> None:
    assert rh.missing_commands("power_write", {"power_cut": "plug off"}) == (
        "needs the device's power_on command (hup_rehearsal_commands), which it has not")
    assert rh.missing_commands("update", {}) is None and rh.missing_commands("link_cut", LAB_COMMANDS) is None
    with pytest.raises(rh.RehearsalError, match="needs its reason"):
        rh.DrillResult("power_write", "not_run")


@pytest.mark.parametrize(("name", "obs", "reason"), [
    ("update", rh.Observed("2.113.0", True, rcs=(0, 0), changed=(9, 0)), ""),
    ("update", rh.Observed("2.113.0", True, rcs=(0, 0), changed=(9, 2)), "the second run changed 2 task(s), not 0"),
    ("update", rh.Observed("2.88.4", True, rcs=(0, 0), changed=(9, 0)), "the device runs 2.88.4, not 2.113.0 committed"),
    ("health", rh.Observed("2.88.4", True, rcs=(2,)), ""),
    ("health", rh.Observed("2.113.0", False, rcs=(2,)),
     "after the health failure the device runs 2.113.0, not 2.88.4: it was not rolled back (the new OS's rollback never triggered)"),
    ("boot", rh.Observed("2.113.0", True, rcs=(0,)), "the update succeeded despite the unbootable new root: the fault did not take"),
    ("power_write", rh.Observed("2.113.0", True, data_intact=True, rcs=(-1, 0), interrupted=True), ""),
    ("power_write", rh.Observed("2.113.0", True, data_intact=False, rcs=(-1, 0), interrupted=True), "the data on /mnt/data changed"),
    ("controller_killed", rh.Observed("2.113.0", True, rcs=(-9, 0), interrupted=False), "the interruption never hit (the update ended before it)"),
    ("link_cut", rh.Observed("2.88.4", True, rcs=(2, 2), interrupted=True), "the run after the interruption failed (exit 2)"),
    ("link_cut", rh.Observed(reachable=False), "the device did not answer after the drill"),
    ("advanced_staged", rh.Observed("2.113.0", True, data_intact=True, rcs=(-9, 0), interrupted=True, between="2.88.4"), ""),
    ("advanced_staged", rh.Observed("2.113.0", True, data_intact=True, rcs=(-9, 0), interrupted=True, between="2.113.0"),
     "after the interruption before the disk write the device ran 2.113.0, not 2.88.4: the old OS was not left intact"),
    ("advanced_staged", rh.Observed("2.113.0", True, data_intact=False, rcs=(-9, 0), interrupted=True, between="2.88.4"),
     "the data on /mnt/data changed"),
    # a takeover rewrites the whole disk: /mnt/data is not kept (hup_allow_data_loss), the plain update still passes
    ("update", rh.Observed("2.113.0", True, data_intact=False, rcs=(0, 0), changed=(9, 0), method="takeover"), ""),
    ("update", rh.Observed("2.113.0", True, data_intact=False, rcs=(0, 0), changed=(9, 0), method="balenahup"),
     "the data on /mnt/data changed"),
])
def test_judge_drill(name: str, obs: rh.Observed, reason: str) -> None:
    got = rh.judge_drill(name, "2.88.4", "2.113.0", obs)
    assert (got.outcome, got.reason) == ("failed" if reason else "passed", reason)


@pytest.mark.parametrize("name", ["health", "boot", "power_write", "power_bootfiles", "controller_killed", "link_cut"])
def test_a_drill_of_the_standard_update_is_not_run_for_a_takeover_pair(name: str) -> None:
    got = rh.judge_drill(name, "5.1.0", "6.1.0", rh.Observed("6.1.0", True, data_intact=False, rcs=(0,), interrupted=False, method="takeover"))
    assert got.outcome == "not_run" and "the advanced update's drill is advanced_staged" in got.reason, got


def test_the_record_passes_only_with_the_update_passed_and_nothing_failed() -> None:
    assert record()["status"] == "passed"
    skipped = record(outcomes={"update": "passed", "power_write": "not_run"})
    assert skipped["status"] == "passed" and skipped["reason"] == "1 drill(s) passed; not run: power_write"
    assert record(outcomes={"update": "passed", "health": "failed"})["reason"] == "drill(s) failed: health"
    assert record(outcomes={"health": "passed"})["status"] == "failed"


def test_pair_file_id_and_the_catalog_digest_ignore_the_tools_keys() -> None:
    assert PAIR.file_id() == "genericx86-64-ext_2.88.4_2.113.0_abababababab"
    entry = {"device_type": "t", "version": "1.0.0", "digest": DIGEST}
    assert rh.catalog_digest(entry, {"primary": "r"}) == rh.catalog_digest({**entry, "x-osfleet-lab": {"a": 1}}, {"primary": "r"})
    assert rh.catalog_digest(entry, {"primary": "r"}) != rh.catalog_digest({**entry, "digest": "sha256:" + "cd" * 32}, {"primary": "r"})


def test_a_health_drill_whose_run_failed_otherwise_fails() -> None:
    got = rh.judge_drill("health", "2.88.4", "2.113.0", rh.Observed("2.88.4", True, rcs=(250,), rolled_back=""))
    assert got.outcome == "failed" and "without reporting a rollback" in got.reason
    assert rh.judge_drill("health", "2.88.4", "2.113.0", rh.Observed("2.88.4", True, rcs=(2,), rolled_back="health")).outcome == "passed"
